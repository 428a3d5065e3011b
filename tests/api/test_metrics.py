"""``GET /metrics``: the gateway's state in Prometheus's format, as a scraper reads it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, Upstream, gateway_config
from tollway.config import LimitsConfig


def scrape(gateway: Gateway) -> dict[str, float]:
    r = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_show_the_store_the_queue_and_each_upstream(gateway: Gateway, secret: str) -> None:
    before = scrape(gateway)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "m"}]}
    r = httpx.post(f"{gateway.url}/v1/messages", headers={"x-api-key": secret}, timeout=30, json=body)
    assert r.status_code == 200
    after = scrape(gateway)
    assert after["tollway_store_writing"] == 1 and after["tollway_open_streams"] == 0
    assert "tollway_usage_pending_rows" in after and after["tollway_usage_dropped_rows_total"] == 0
    ok = "tollway_upstream_tries_total{outcome=success,upstream=fake}"
    assert after[ok] == before[ok] + 1
    assert after["tollway_upstream_resting_seconds{upstream=dead}"] >= 0
    assert "tollway_limits_shared" not in after  # no Redis configured: nothing shared to report


def test_metrics_say_when_redis_is_away(upstream: Upstream, tmp_path: Path) -> None:
    base = gateway_config(upstream.url, tmp_path / "away.db")
    # Port 1 refuses connections: a Redis that is down.
    gateway = Gateway(dataclasses.replace(base, limits=LimitsConfig(url="redis://127.0.0.1:1/0", retry_delay=60)))
    try:
        secret = gateway.create_key("away", rpm=5)
        assert httpx.post(f"{gateway.url}/v1/messages", headers={"x-api-key": secret}, timeout=30,
                          json={"model": "claude-sonnet-4-6", "max_tokens": 16,
                                "messages": [{"role": "user", "content": "m"}]}).status_code == 200
        samples = scrape(gateway)
        assert samples["tollway_limits_shared"] == 0 and samples["tollway_limits_redis_outages_total"] >= 1
        assert samples["tollway_replica_messages_listening"] == 0
        assert samples["tollway_balances_unsettled"] == 0
    finally:
        gateway.server.close()
