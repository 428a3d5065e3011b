"""Rate limits shared through Redis by two gateways on one database: a key's limit holds across both."""

from __future__ import annotations

import dataclasses
import time
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


def test_a_rest_one_replica_decides_reaches_the_other(pair: tuple[Gateway, Gateway], upstream: Upstream) -> None:
    first, second = pair
    secret = first.create_key("rested")
    upstream.fake.force, upstream.fake.force_count = "error:429:error_429_rate_limit", 1  # retry-after: 7
    try:
        r = httpx.post(f"{first.url}/v1/messages", json=BODY, headers={"x-api-key": secret}, timeout=30)
        assert r.status_code == 429
        deadline = time.monotonic() + 3
        while True:
            keys = next(u for u in httpx.get(f"{second.url}/healthz", timeout=10).json()["upstreams"]
                        if u["upstream"] == "fake")["keys"]
            if keys[0]["resting_s"] > 0:
                break
            assert time.monotonic() < deadline, "the other replica never heard of the rest"
            time.sleep(0.05)
        assert keys[0]["rate_limited"] is True and 0 < keys[0]["resting_s"] <= 7
    finally:
        upstream.fake.reset()
        first.services.health.reset()
        second.services.health.reset()


def test_with_redis_away_a_replica_serves_on_its_own_limits(upstream: Upstream, tmp_path: Path) -> None:
    base = gateway_config(upstream.url, tmp_path / "alone.db")
    # Port 1 refuses connections: a Redis that is down.
    gateway = Gateway(dataclasses.replace(base, limits=LimitsConfig(url="redis://127.0.0.1:1/0", retry_delay=60)))
    try:
        secret = gateway.create_key("alone", rpm=2)
        statuses = [httpx.post(f"{gateway.url}/v1/messages", json=BODY, headers={"x-api-key": secret},
                               timeout=30).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # limited all the same, by this replica alone
        health = httpx.get(f"{gateway.url}/healthz", timeout=10).json()
        assert health["limits"]["backend"] == "redis" and health["limits"]["shared"] is False
    finally:
        gateway.server.close()
