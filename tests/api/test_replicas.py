"""Two replicas sharing one PostgreSQL database: what one learns, the other knows within a second or two."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, PostgresDatabases, Upstream, gateway_config
from tollway.config import StorageConfig

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def replicas(upstream: Upstream, postgres_databases: PostgresDatabases) -> Iterator[tuple[Gateway, Gateway]]:
    url = postgres_databases.create_migrated("replicas")
    base = gateway_config(upstream.url, Path("unused.db"))  # its storage is replaced below
    config = dataclasses.replace(base, storage=StorageConfig(url=url, flush_interval=0.05, key_refresh_interval=1.0))
    first, second = Gateway(config), Gateway(config)
    try:
        yield first, second
    finally:
        first.server.close()
        second.server.close()


def status(gateway: Gateway, secret: str) -> int:
    return httpx.post(f"{gateway.url}/v1/messages", json=BODY, headers={"x-api-key": secret}, timeout=30).status_code


def test_a_key_revoked_on_one_replica_is_refused_by_every_replica_within_two_seconds(
        replicas: tuple[Gateway, Gateway]) -> None:
    first, second = replicas
    secret = first.create_key("leaving")
    assert (status(first, secret), status(second, secret)) == (200, 200)
    key_id = first.key_id("leaving")
    assert first.server.thread.run(first.services.store.revoke_key(key_id))  # as `tollway keys revoke` does
    revoked = time.monotonic()
    waits = []
    for gateway in (first, second):
        while status(gateway, secret) != 401:
            assert time.monotonic() - revoked < 2.5, "a replica still accepts a revoked key"
            time.sleep(0.05)
        waits.append(time.monotonic() - revoked)
    assert max(waits) < 2.5


def test_usage_from_both_replicas_lands_in_one_ledger(replicas: tuple[Gateway, Gateway]) -> None:
    first, second = replicas
    secret = first.create_key("both")
    ids = []
    for gateway in (first, second, first, second):
        r = httpx.post(f"{gateway.url}/v1/messages", json=BODY, headers={"x-api-key": secret}, timeout=30)
        assert r.status_code == 200
        ids.append(r.headers["request-id"])
    second.server.thread.run(second.services.ledger.flush())
    rows = {r.request_id for r in first.usage()}  # first's store reads what both wrote
    assert set(ids) <= rows and len(set(ids)) == 4
