"""Rate limits shared through Redis by two gateways on one database: a key's limit holds across both."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, Upstream, gateway_config
from tollway.config import LimitsConfig

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def pair(upstream: Upstream, tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[tuple[Gateway, Gateway]]:
    base = gateway_config(upstream.url, tmp_path / "shared.db")
    config = dataclasses.replace(base, limits=LimitsConfig(url=redis_url, prefix=redis_prefix))
    first, second = Gateway(config), Gateway(config)
    try:
        yield first, second
    finally:
        first.server.close()
        second.server.close()


def test_a_key_gets_its_requests_per_minute_across_replicas_not_per_replica(pair: tuple[Gateway, Gateway]) -> None:
    first, second = pair
    secret = first.create_key("shared", rpm=4)
    statuses = []
    for i in range(8):  # alternating between the two replicas, as a load balancer would
        gateway = (first, second)[i % 2]
        r = httpx.post(f"{gateway.url}/v1/messages", json=BODY, headers={"x-api-key": secret}, timeout=30)
        statuses.append(r.status_code)
    assert statuses.count(200) == 4 and statuses.count(429) == 4
    health = httpx.get(f"{first.url}/healthz", timeout=10).json()
    assert health["limits"] == {"backend": "redis", "shared": True, "outages": 0}
