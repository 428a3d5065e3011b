"""``GET /metrics``: the gateway's state in Prometheus's format, as a scraper reads it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, Upstream, gateway_config
from tollway.config import LimitsConfig, parse_config


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
    assert after["tollway_usage_held_requests"] == 0
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


def test_requests_tokens_cost_latency_and_failovers_are_counted(upstream: Upstream, tmp_path: Path) -> None:
    raw = {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {"url": f"sqlite:///{tmp_path / 'm.db'}", "flush_interval": 0.05},
        "upstreams": [
            {"name": "fake", "kind": "anthropic", "base_url": upstream.url, "api_keys": ["upstream-secret"]},
            # Port 1 on loopback refuses connections: an upstream that is down, tried first.
            {"name": "dead", "kind": "anthropic", "base_url": "http://127.0.0.1:1", "api_keys": ["x"]},
        ],
        "models": [
            {"name": "claude-sonnet-4-6", "targets": [{"upstream": "fake"}]},
            {"name": "claude-opus-4-6", "targets": [{"upstream": "dead"}, {"upstream": "fake", "priority": 2}]},
        ],
        "log": {"requests": "off"},
    }
    gateway = Gateway(parse_config(raw, "test", {}))
    try:
        client = gateway.client(gateway.create_key("m"))
        for _ in range(3):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                   messages=[{"role": "user", "content": "m"}])
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=16,
                                    messages=[{"role": "user", "content": "m"}]) as s:
            s.until_done()
        for _ in range(4):  # the third failure in a row rests "dead": the fourth request goes straight to "fake"
            client.messages.create(model="claude-opus-4-6", max_tokens=16, messages=[{"role": "user", "content": "m"}])
        for model in ("no-such-model", "another-made-up-one"):
            with pytest.raises(anthropic.NotFoundError):
                client.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "m"}])
        with pytest.raises(anthropic.AuthenticationError):
            gateway.client("tw-nope").messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                                      messages=[{"role": "user", "content": "m"}])
        m = scrape(gateway)
    finally:
        gateway.server.close()
    label = "endpoint=messages,error_type=,model={},status={},upstream={}"
    assert m["tollway_requests_total{" + label.format("claude-sonnet-4-6", 200, "fake") + "}"] == 4
    assert m["tollway_requests_total{" + label.format("claude-opus-4-6", 200, "fake") + "}"] == 4
    # Models nobody routes share one series; a refused key names no model or upstream.
    assert m["tollway_requests_total{endpoint=messages,error_type=not_found_error,model=other,status=404,"
             "upstream=}"] == 2
    assert m["tollway_requests_total{endpoint=messages,error_type=authentication_error,model=,status=401,"
             "upstream=}"] == 1
    assert m["tollway_upstream_failovers_total{upstream=dead}"] == 3
    assert m["tollway_request_duration_seconds_count{stream=false,upstream=fake}"] == 7
    assert m["tollway_request_duration_seconds_count{stream=true,upstream=fake}"] == 1
    assert m["tollway_request_duration_seconds_bucket{le=+Inf,stream=false,upstream=fake}"] == 7
    assert m["tollway_request_duration_seconds_sum{stream=false,upstream=fake}"] > 0
    assert m["tollway_time_to_first_byte_seconds_count{stream=true,upstream=fake}"] == 1
    assert m["tollway_tokens_total{kind=input,model=claude-sonnet-4-6}"] > 0
    assert m["tollway_tokens_total{kind=output,model=claude-sonnet-4-6}"] > 0
    assert m["tollway_cost_usd_total{model=claude-sonnet-4-6}"] > 0
    assert "tollway_request_log_dropped_lines_total" not in m  # the request log is off here
    assert m["tollway_upstream_rests_total{scope=upstream,upstream=dead}"] == 1
    assert m["tollway_upstream_rests_total{scope=key,upstream=fake}"] == 0
