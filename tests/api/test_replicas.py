"""Two replicas sharing one PostgreSQL database: what one learns, the other knows within a second or two."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import TOLLWAY
from tests.conftest import Gateway, PostgresDatabases, Upstream, gateway_config
from tollway.config import AdminConfig, LimitsConfig, StorageConfig

ADMIN_TOKEN = "admin-token-for-the-replica-tests"
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


@pytest.fixture
def listening_replicas(upstream: Upstream, postgres_databases: PostgresDatabases, redis_url: str,
                       redis_prefix: str) -> Iterator[tuple[Gateway, Gateway, str]]:
    """Two replicas that reload keys only every 30 s on their own, but hear changes through Redis."""
    url = postgres_databases.create_migrated("announced")
    base = gateway_config(upstream.url, Path("unused.db"))
    config = dataclasses.replace(base, storage=StorageConfig(url=url, flush_interval=0.05, key_refresh_interval=30),
                                 limits=LimitsConfig(url=redis_url, prefix=redis_prefix),
                                 admin=AdminConfig(token=ADMIN_TOKEN))
    first, second = Gateway(config), Gateway(config)
    try:
        yield first, second, url
    finally:
        first.server.close()
        second.server.close()


def test_a_key_revoked_by_the_cli_is_refused_by_every_replica_within_a_second(
        listening_replicas: tuple[Gateway, Gateway, str], tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    first, second, url = listening_replicas
    secret = first.create_key("announced")
    for gateway in (first, second):
        until_listening(gateway)
        assert status(gateway, secret) == 200
    config = tmp_path / "tollway.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n\n[limits]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"\n\n'
                      '[[upstreams]]\nname = "mock"\nkind = "mock"\n\n'
                      '[[models]]\nname = "mock-model"\ntargets = [{ upstream = "mock" }]\n', encoding="utf-8")
    done = subprocess.run([str(TOLLWAY), "keys", "revoke", "--config", str(config), first.key_id("announced")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    revoked = time.monotonic()
    for gateway in (first, second):
        while status(gateway, secret) != 401:
            assert time.monotonic() - revoked < 1.0, "a replica still accepts a key the CLI revoked"
            time.sleep(0.02)


def until_listening(gateway: Gateway) -> None:
    deadline = time.monotonic() + 5
    while not gateway.services.bus.listening:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_key_revoked_through_one_replicas_admin_api_is_refused_by_the_other_within_a_second(
        listening_replicas: tuple[Gateway, Gateway, str]) -> None:
    first, second, _ = listening_replicas
    secret = first.create_key("admin-revoked")
    until_listening(second)
    assert status(second, secret) == 200
    r = httpx.post(f"{first.url}/admin/keys/{first.key_id('admin-revoked')}/revoke", timeout=30,
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    revoked = time.monotonic()
    while status(second, secret) != 401:
        assert time.monotonic() - revoked < 1.0, "the other replica still accepts the revoked key"
        time.sleep(0.02)
