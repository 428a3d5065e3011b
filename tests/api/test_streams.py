"""Streams that do not end well: an upstream that dies, a client that leaves."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import httpx
import orjson
import pytest

from tests.conftest import Gateway, Upstream
from tests.support.fake_anthropic import USAGE
from tollway.store import UsageRecord

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "tell me"}]}


def events_of(raw: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], orjson.loads(lines["data"])))
    return out


@pytest.mark.parametrize("cut_after", [1, 3, 5])
def test_upstream_dies_mid_stream(gateway: Gateway, secret: str, cut_after: int) -> None:
    r = httpx.post(f"{gateway.url}/v1/messages", json=BODY,
                   headers={"x-api-key": secret, "x-fake-scenario": f"die:{cut_after}"}, timeout=30)
    assert r.status_code == 200
    events = events_of(r.content)
    names = [name for name, _ in events]
    assert names[:cut_after] == ["message_start", "content_block_start", "ping", "content_block_delta",
                                 "content_block_delta"][:cut_after]
    # Exactly one error event, and it is the last thing sent.
    assert names.count("error") == 1 and names[-1] == "error"
    error = events[-1][1]
    assert error["type"] == "error"
    assert isinstance(error["error"], dict) and error["error"]["type"] == "api_error"
    assert error["request_id"] == r.headers["request-id"]

    row = gateway.row(r.headers["request-id"])
    assert (row.status, row.error_type, row.stream) == (200, "api_error", True)
    # Tokens the upstream reported before it died are still metered.
    assert row.input_tokens == USAGE["input_tokens"]


def test_sdk_sees_mid_stream_error(gateway: Gateway, secret: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as info, gateway.client(secret).messages.stream(
            model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-scenario": "die:4"}) as stream:
        for _ in stream:
            pass
    assert "broke off" in str(info.value)


def test_upstream_error_event_is_relayed_not_doubled(gateway: Gateway, secret: str) -> None:
    r = httpx.post(f"{gateway.url}/v1/messages", json=BODY,
                   headers={"x-api-key": secret, "x-fake-scenario": "sse:error_event_docs_snippet"}, timeout=30)
    names = [name for name, _ in events_of(r.content)]
    assert names.count("error") == 1
    row = gateway.row(r.headers["request-id"])
    assert row.error_type == "overloaded_error"


def test_client_that_leaves_cancels_the_upstream_request(gateway: Gateway, upstream: Upstream, secret: str) -> None:
    async def leave_early() -> str:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{gateway.url}/v1/messages", json=BODY,
                                      headers={"x-api-key": secret, "x-fake-scenario": "hang"})
            first = await resp.content.readuntil(b"\n\n")
            assert first.startswith(b"event: message_start")
            request_id = resp.headers["request-id"]
            resp.close()  # drop the connection mid-stream
            return request_id

    before = upstream.fake.cancelled.count("hang")
    request_id = asyncio.run(leave_early())
    deadline = time.monotonic() + 10
    while upstream.fake.cancelled.count("hang") == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.fake.cancelled.count("hang") == before + 1, "the upstream request was not cancelled"

    deadline = time.monotonic() + 10
    rows: list[UsageRecord] = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in gateway.usage() if r.request_id == request_id]
        time.sleep(0.02)
    assert len(rows) == 1
    assert (rows[0].status, rows[0].error_type) == (499, "client_closed")
    assert rows[0].input_tokens == USAGE["input_tokens"]


def test_stream_cut_by_max_tokens_is_relayed_as_is(gateway: Gateway, secret: str) -> None:
    # The SDK's own fixture of a stream cut by max_tokens inside a tool call: no content_block_stop, but
    # a message_stop. That is a complete answer, so no error event may be added to it.
    r = httpx.post(f"{gateway.url}/v1/messages", json=BODY, timeout=30,
                   headers={"x-api-key": secret, "x-fake-scenario": "sse:tool_use_truncated_max_tokens_stream"})
    names = [name for name, _ in events_of(r.content)]
    assert names[-1] == "message_stop" and "error" not in names
    row = gateway.row(r.headers["request-id"])
    assert (row.error_type, row.output_tokens) == (None, 124)
