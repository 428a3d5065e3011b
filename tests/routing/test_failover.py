"""Failover and rests, end to end: the SDK or raw HTTP -> Tollway -> fake upstreams told to fail."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import Gateway
from tests.routing.conftest import Fake
from tollway.config import parse_config

pytestmark = pytest.mark.usefixtures("reset")

BODY = {"model": "claude-opus-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def upstream(name: str, url: str, keys: list[str] | None = None, **timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": "anthropic", "base_url": url, "api_keys": keys or [f"key-{name}"]}
    if timeout:
        out["timeout"] = timeout
    return out


@pytest.fixture
def gw(fakes: dict[str, Fake], tmp_path: Path) -> Iterator[Gateway]:
    a, b, c = fakes["a"].url, fakes["b"].url, fakes["c"].url
    raw = {
        "storage": {"url": f"sqlite:///{tmp_path / 'r.db'}", "flush_interval": 0.05},
        "upstreams": [
            upstream("a", a), upstream("b", b), upstream("c", c),
            upstream("pool", a, ["k1", "k2"]),
            upstream("dead", "http://127.0.0.1:1"),
            upstream("a-short", a, first_byte=0.3, idle=0.3),
            {**upstream("a-one", a), "max_concurrency": 1},
            upstream("a-patient", a, first_byte=2, idle=0.3),
        ],
        "models": [
            # priority decides the order, so each test knows who is tried first
            {"name": "claude-opus-4-6", "targets": [{"upstream": "a"}, {"upstream": "c", "priority": 2}]},
            {"name": "claude-haiku-4-5-20251001",
             "targets": [{"upstream": "dead"}, {"upstream": "a", "priority": 2}]},
            {"name": "claude-sonnet-4-5-20250929",
             "targets": [{"upstream": "a-short"}, {"upstream": "b", "priority": 2}]},
            {"name": "claude-sonnet-4-6", "targets": [{"upstream": "pool"}]},
            {"name": "claude-opus-4-5-20251101", "targets": [{"upstream": "a"}],
             "retry": {"attempts": 3, "backoff": 0.01}},
            {"name": "claude-opus-4-1-20250805",
             "targets": [{"upstream": "a-patient"}, {"upstream": "b", "priority": 2}]},
            {"name": "claude-opus-4-20250514", "targets": [{"upstream": "a-one"}]},
            {"name": "claude-3-5-sonnet-20241022",
             "targets": [{"upstream": "a-one"}, {"upstream": "c", "priority": 2}]},
            {"name": "claude-3-7-sonnet-20250219",
             "targets": [{"upstream": "a"}, {"upstream": "b"}, {"upstream": "c"}]},
        ],
    }
    gateway = Gateway(parse_config(raw, "routing tests", {}))
    yield gateway
    gateway.server.close()


def post(gw: Gateway, secret: str, body: dict[str, Any] | None = None, **fields: Any) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/messages", json={**(body or BODY), **fields}, headers={"x-api-key": secret},
                      timeout=30)


def tries(gw: Gateway, r: httpx.Response) -> list[tuple[str, int]]:
    row = gw.row(r.headers["request-id"])
    if row.tries is None:
        return [(row.upstream or "", row.status)]
    return [(t["upstream"], t["status"]) for t in json.loads(row.tries)]


def health(gw: Gateway) -> dict[str, Any]:
    return {u["upstream"]: u for u in httpx.get(f"{gw.url}/healthz").json()["upstreams"]}


@pytest.mark.parametrize(("force", "status"), [("error:529:error_529_overloaded", 529),
                                               ("error:500:error_529_overloaded", 500),
                                               ("error:429:error_429_rate_limit", 429)])
def test_failover_to_the_next_target_and_rest(gw: Gateway, fakes: dict[str, Fake], force: str, status: int) -> None:
    secret = gw.create_key()
    fakes["a"].fake.force = force
    r = post(gw, secret)
    assert r.status_code == 200, r.text
    assert tries(gw, r) == [("a", status), ("c", 200)]
    state = health(gw)["a"]
    rested = state["keys"][0] if status == 429 else state
    assert rested["resting_s"] > 5  # the upstream's retry-after: 7
    # While a rests, requests go straight to c.
    before = fakes["a"].count
    assert post(gw, secret).status_code == 200
    assert fakes["a"].count == before


def test_connection_refused(gw: Gateway, fakes: dict[str, Fake]) -> None:
    secret = gw.create_key()
    for _ in range(3):  # an upstream is rested after three failures in a row
        assert health(gw)["dead"]["state"] == "ok"
        r = post(gw, secret, model="claude-haiku-4-5-20251001")
        assert r.status_code == 200
        assert tries(gw, r) == [("dead", 502), ("a", 200)]
    assert health(gw)["dead"]["state"] == "resting"
    r = post(gw, secret, model="claude-haiku-4-5-20251001")
    assert tries(gw, r) == [("a", 200)]


def test_hang_before_headers_times_out_and_fails_over(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "stall:5"
    started = time.monotonic()
    r = post(gw, gw.create_key(), model="claude-sonnet-4-5-20250929")
    assert r.status_code == 200
    assert time.monotonic() - started < 3
    assert tries(gw, r) == [("a-short", 504), ("b", 200)]


def test_upstream_that_dies_before_its_first_byte_is_failed_over(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "die:0"
    r = post(gw, gw.create_key(), stream=True)
    events = [line for line in r.text.splitlines() if line.startswith("event: ")]
    assert events.count("event: message_start") == 1 and events[-1] == "event: message_stop"
    assert tries(gw, r) == [("a", 502), ("c", 200)]


@pytest.mark.parametrize("force", ["die:3", "hang"])
def test_failure_after_the_first_byte_is_never_failed_over(gw: Gateway, fakes: dict[str, Fake], force: str) -> None:
    fakes["a"].fake.force = force
    model = "claude-sonnet-4-5-20250929" if force == "hang" else "claude-opus-4-6"
    before = fakes["b"].count + fakes["c"].count
    r = post(gw, gw.create_key(), model=model, stream=True)
    events = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events.count("message_start") == 1  # one answer, never two
    assert events[-1] == "error" and events.count("error") == 1
    assert fakes["b"].count + fakes["c"].count == before
    error = orjson.loads(r.text.strip().splitlines()[-1][6:])
    assert error["error"]["type"] == ("timeout_error" if force == "hang" else "api_error")


def test_client_errors_are_not_retried(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "error:400:error_400_invalid_request_prompt_too_long"
    before = fakes["c"].count
    r = post(gw, gw.create_key())
    assert r.status_code == 400
    assert fakes["c"].count == before
    assert health(gw)["a"]["state"] == "ok"


def test_x_should_retry_false_is_honoured(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "error:529:error_529_overloaded"
    fakes["a"].fake.should_retry = "false"
    before = fakes["c"].count
    r = post(gw, gw.create_key())
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    assert fakes["c"].count == before


def test_retries_on_one_target_with_backoff(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force, fakes["a"].fake.force_count = "error:500:error_529_overloaded", 2
    fakes["a"].fake.retry_after = "0"
    r = post(gw, gw.create_key(), model="claude-opus-4-5-20251101")
    assert r.status_code == 200, r.text
    assert tries(gw, r) == [("a", 500), ("a", 500), ("a", 200)]


def test_key_pool_rests_only_the_limited_key(gw: Gateway, fakes: dict[str, Fake]) -> None:
    secret = gw.create_key()
    fakes["a"].fake.force, fakes["a"].fake.force_key = "error:429:error_429_rate_limit", "k1"
    # Keys are drawn at random: send until k1 has been tried (and refused) once; it is then rested.
    for _ in range(30):
        assert post(gw, secret, model="claude-sonnet-4-6").status_code == 200
        if any(r.headers["x-api-key"] == "k1" for r in fakes["a"].fake.received):
            break
    pool = health(gw)["pool"]
    assert pool["keys"][0]["rate_limited"] is True and pool["keys"][1]["resting_s"] == 0
    before = fakes["a"].count
    for _ in range(3):
        assert post(gw, secret, model="claude-sonnet-4-6").status_code == 200
    used = [r.headers["x-api-key"] for r in fakes["a"].fake.received[before:]]
    assert used == ["k2", "k2", "k2"]


def test_every_key_rate_limited_gives_429_with_retry_after(gw: Gateway, fakes: dict[str, Fake]) -> None:
    secret = gw.create_key()
    fakes["a"].fake.force, fakes["a"].fake.retry_after = "error:429:error_429_rate_limit", "30"
    first = post(gw, secret, model="claude-sonnet-4-6")
    assert first.status_code == 429  # both keys tried, both limited: the last answer is forwarded
    before = fakes["a"].count
    r = post(gw, secret, model="claude-sonnet-4-6")
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert 25 <= int(r.headers["retry-after"]) <= 30
    assert fakes["a"].count == before  # refused without bothering the upstream
    with pytest.raises(anthropic.RateLimitError):
        gw.client(secret).messages.create(model="claude-sonnet-4-6", max_tokens=5,
                                          messages=[{"role": "user", "content": "x"}])


def test_upstreams_command_shows_rests(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "error:529:error_529_overloaded"
    post(gw, gw.create_key())
    out = subprocess.run([sys.executable, "-m", "tollway", "upstreams", "--url", gw.url], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    line_a = next(line for line in out.splitlines() if line.startswith("a "))
    assert "resting" in line_a and "overloaded_error" in line_a
    assert next(line for line in out.splitlines() if line.startswith("c ")).split()[2] == "ok"


def test_failover_drops_thinking_signed_by_the_first_account(gw: Gateway, fakes: dict[str, Fake]) -> None:
    secret = gw.create_key()
    signed = {"type": "thinking", "thinking": "let me see", "signature": "EqQBCgIYAhIMsignedByAccountA"}
    body = {"model": "claude-3-7-sonnet-20250219", "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "first question"},
                         {"role": "assistant", "content": [signed, {"type": "text", "text": "an answer"}]},
                         {"role": "user", "content": "second question"}]}
    counts = {n: f.count for n, f in fakes.items()}
    assert post(gw, secret, body).status_code == 200
    home = next(n for n, f in fakes.items() if f.count > counts[n])
    # The conversation's own account gets the thinking back untouched, as its cache affinity says.
    assert fakes[home].fake.received[-1].json["messages"][1]["content"][0] == signed
    fakes[home].fake.force = "error:529:error_529_overloaded"
    r = post(gw, secret, body)
    assert r.status_code == 200
    (first, _), (other, status) = tries(gw, r)
    assert first == home and other != home and status == 200
    sent = fakes[other].fake.received[-1].json
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "an answer"}]


def test_max_concurrency_sends_the_overflow_elsewhere(gw: Gateway, fakes: dict[str, Fake]) -> None:
    secret = gw.create_key()
    body = {**BODY, "model": "claude-3-5-sonnet-20241022", "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": secret, "x-fake-scenario": "slow:100"}) as slow:
        chunks = slow.iter_raw()  # kept: a dropped iterator would close the stream
        next(chunks)  # a-one is now busy with this stream
        r = post(gw, secret, model="claude-3-5-sonnet-20241022")
        assert r.status_code == 200
        assert tries(gw, r) == [("c", 200)]
        assert health(gw)["a-one"]["in_flight"] == 1
        assert b"".join(chunks).rstrip().endswith(b'{"type":"message_stop"}')
    assert health(gw)["a-one"]["in_flight"] == 0


def test_first_byte_timeout_is_not_cut_to_the_idle_one(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "stall:0.8"  # longer than idle (0.3 s), shorter than first_byte (2 s)
    r = post(gw, gw.create_key(), model="claude-opus-4-1-20250805")
    assert r.status_code == 200
    assert tries(gw, r) == [("a-patient", 200)]


def test_max_concurrency_is_a_cap(gw: Gateway, fakes: dict[str, Fake]) -> None:
    secret = gw.create_key()
    body = {**BODY, "model": "claude-opus-4-20250514", "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": secret, "x-fake-scenario": "slow:100"}) as slow:
        chunks = slow.iter_raw()
        next(chunks)
        r = post(gw, secret, model="claude-opus-4-20250514")
        assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
        b"".join(chunks)


def test_a_retry_sends_the_sanitized_history_too(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force, fakes["a"].fake.force_count, fakes["a"].fake.retry_after = (
        "error:500:error_529_overloaded", 1, "0")
    body = {**BODY, "model": "claude-opus-4-5-20251101",
            "messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": [
                             {"type": "thinking", "thinking": "t", "signature": "tollway1:00ff"},
                             {"type": "text", "text": "a"}]},
                         {"role": "user", "content": "again"}]}
    before = fakes["a"].count
    r = post(gw, gw.create_key(), body)
    assert r.status_code == 200 and tries(gw, r) == [("a", 500), ("a", 200)]
    sent = fakes["a"].fake.received[before:]
    assert len(sent) == 2 and all(b"tollway1:" not in item.body for item in sent)


def test_a_stream_that_breaks_counts_against_the_upstream(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "die:3"
    post(gw, gw.create_key(), stream=True)
    state = health(gw)["a"]
    assert state["errors"] == 1 and state["failures"] == 1 and "stream broke" in state["last_error"]


def test_headers_then_silence_times_out_and_fails_over(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force = "mute"
    started = time.monotonic()
    r = post(gw, gw.create_key(), model="claude-sonnet-4-5-20250929", stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith('{"type":"message_stop"}')
    assert tries(gw, r) == [("a-short", 504), ("b", 200)]
    assert time.monotonic() - started < 3


def test_configured_attempts_also_wait_for_a_streams_first_chunk(gw: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["a"].fake.force, fakes["a"].fake.force_count = "die:0", 1
    r = post(gw, gw.create_key(), model="claude-opus-4-5-20251101", stream=True)
    assert r.text.rstrip().endswith('{"type":"message_stop"}')
    assert tries(gw, r) == [("a", 502), ("a", 200)]


def test_a_client_that_leaves_mid_try_is_recorded_in_the_tries(gw: Gateway, fakes: dict[str, Fake]) -> None:
    import asyncio

    import aiohttp

    secret = gw.create_key("leaver")
    fakes["a"].fake.force = "stall:5"

    async def leave() -> None:
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await session.post(f"{gw.url}/v1/messages", json=BODY, headers={"x-api-key": secret})

    asyncio.run(leave())
    key_id = gw.key_id("leaver")
    deadline = time.monotonic() + 10
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in gw.usage() if r.key_id == key_id]
        time.sleep(0.05)
    assert len(rows) == 1
    assert (rows[0].status, rows[0].error_type, rows[0].upstream) == (499, "client_closed", "a")
    assert json.loads(rows[0].tries) == [{"upstream": "a", "key": 0, "status": 499, "error": "client_closed",
                                          "ms": json.loads(rows[0].tries)[0]["ms"]}]
