"""A key's rate limits through the real server: Anthropic's headers, 429 with retry-after, SDK retries."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import Gateway, Upstream, gateway_config
from tollway.config import KeyLimitConfig, RateLimits

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


def post(gateway: Gateway, secret: str, **fields: object) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/messages", json={**BODY, **fields}, headers={"x-api-key": secret},
                      timeout=30)


def test_requests_per_minute(gateway: Gateway) -> None:
    secret = gateway.create_key("rpm", rpm=2)
    first = post(gateway, secret)
    assert first.status_code == 200
    assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert post(gateway, secret).headers["anthropic-ratelimit-requests-remaining"] == "0"
    refused = post(gateway, secret)
    assert refused.status_code == 429
    body = refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    row = gateway.row(refused.headers["request-id"])
    assert (row.status, row.error_type) == (429, "rate_limit_error")


def test_the_sdk_waits_and_its_retry_passes(gateway: Gateway) -> None:
    secret = gateway.create_key("rpm-sdk", rpm=30)  # one more request every 2 seconds
    with httpx.Client(headers={"x-api-key": secret}, timeout=30) as client:
        for _ in range(30):
            assert client.post(f"{gateway.url}/v1/messages", json=BODY).status_code == 200
        probe = client.post(f"{gateway.url}/v1/messages", json=BODY)
    assert probe.status_code == 429 and probe.headers["retry-after"] == "2"
    sdk = anthropic.Anthropic(api_key=secret, base_url=gateway.url, max_retries=3)
    started = time.monotonic()
    message = sdk.messages.create(**BODY)  # type: ignore[call-overload]
    assert message.content
    key_id = gateway.key_id("rpm-sdk")
    statuses = [r.status for r in gateway.usage() if r.key_id == key_id]
    assert statuses.count(429) >= 2 and statuses.count(200) == 31  # the SDK was refused, waited, passed
    assert time.monotonic() - started >= 1.0


def test_output_tokens_are_charged_at_max_tokens_then_refunded(gateway: Gateway) -> None:
    secret = gateway.create_key("otpm", otpm=1000)
    r = post(gateway, secret, max_tokens=900)
    assert r.status_code == 200
    # The fake upstream reports 7 output tokens: 900 was reserved, 893 given back after the answer.
    r = post(gateway, secret, max_tokens=900)
    assert r.status_code == 200, r.text
    assert int(r.headers["anthropic-ratelimit-output-tokens-remaining"]) < 1000 - 900
    r = post(gateway, secret, max_tokens=990)
    assert r.status_code == 429 and "output tokens" in r.json()["error"]["message"]


def test_input_tokens_per_minute(gateway: Gateway) -> None:
    secret = gateway.create_key("itpm", itpm=100)
    long = [{"role": "user", "content": "x" * 400}]
    # About 125 tokens estimated: charged at the whole bucket (100), then refunded down to the upstream's
    # count (31 + 12 cache writes), which leaves 57; the same request again needs 100.
    first = post(gateway, secret, messages=long)
    assert first.status_code == 200 and first.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"
    second = post(gateway, secret, messages=long)
    assert second.status_code == 429
    assert "input tokens" in second.json()["error"]["message"]
    assert 50 <= int(second.headers["anthropic-ratelimit-input-tokens-remaining"]) <= 57


def test_concurrency(gateway: Gateway) -> None:
    secret = gateway.create_key("conc", max_concurrency=1)
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json={**BODY, "stream": True}, timeout=30,
                      headers={"x-api-key": secret, "x-fake-scenario": "slow:100"}) as slow:
        chunks = slow.iter_raw()
        next(chunks)
        refused = post(gateway, secret)
        assert refused.status_code == 429 and "in flight" in refused.json()["error"]["message"]
        b"".join(chunks)
    assert post(gateway, secret).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_unlimited_keys_carry_no_rate_limit_headers(gateway: Gateway, secret: str, stream: bool) -> None:
    r = post(gateway, secret, stream=stream)
    assert r.status_code == 200
    assert not any(h.startswith("anthropic-ratelimit") for h in r.headers)


def test_stream_answers_carry_the_headers(gateway: Gateway) -> None:
    secret = gateway.create_key("rpm-stream", rpm=10)
    r = post(gateway, secret, stream=True)
    assert r.headers["anthropic-ratelimit-requests-remaining"] == "9"


def test_a_charge_above_the_whole_bucket_is_capped_not_refused_forever(gateway: Gateway) -> None:
    secret = gateway.create_key("otpm-small", otpm=1000)
    r = post(gateway, secret, max_tokens=32000)  # Claude Code's usual max_tokens
    assert r.status_code == 200
    assert r.headers["anthropic-ratelimit-output-tokens-remaining"] == "0"


def test_errors_after_admission_carry_the_headers(gateway: Gateway) -> None:
    secret = gateway.create_key("rpm-err", rpm=10)
    r = httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=30,
                   headers={"x-api-key": secret, "x-fake-scenario": "html:502"})
    assert r.status_code == 502
    assert r.headers["anthropic-ratelimit-requests-remaining"] == "9"


def test_model_limits_from_the_config_and_a_key_rule_over_them(upstream: Upstream, tmp_path: Path) -> None:
    base = gateway_config(upstream.url, tmp_path / "t.db")
    models = tuple(dataclasses.replace(m, limits=RateLimits(rpm=1)) if m.name == "claude-sonnet-4-6" else m
                   for m in base.models)
    config = dataclasses.replace(base, models=models, key_limits=(
        KeyLimitConfig(key="vip", model="claude-sonnet-*", limits=RateLimits(rpm=3)),))
    gw = Gateway(config)
    try:
        plain, vip = gw.create_key("plain"), gw.create_key("vip")  # neither has limits of its own
        assert post(gw, plain).status_code == 200
        refused = post(gw, plain)
        assert refused.status_code == 429
        assert "claude-sonnet-4-6" in refused.json()["error"]["message"]
        assert refused.headers["anthropic-ratelimit-requests-limit"] == "1"
        # Another model is not limited by the first one's rule.
        assert post(gw, plain, model="claude-haiku-4-5-20251001").status_code == 200
        statuses = [post(gw, vip).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]  # the key's rule replaces the model's 1 rpm with 3
    finally:
        gw.server.close()
