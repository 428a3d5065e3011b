"""One JSON line per request, through the real gateway and the official SDK: the request-id the client saw, and
never a key, a prompt or an answer unless the operator turned that on for the key."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import Gateway, Upstream, gateway_config
from tollway.config import LogConfig

PROMPT = "the zebra crosses at midnight"


@pytest.fixture
def logged(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    path = tmp_path / "requests.log"
    config = dataclasses.replace(gateway_config(upstream.url, tmp_path / "log.db"), log=LogConfig(requests=str(path)))
    gateway = Gateway(config)
    yield gateway, path
    gateway.server.close()


def lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The log's lines once there are ``count`` (they are written in batches, a fraction of a second later)."""
    deadline = time.monotonic() + 10
    while True:
        raw = path.read_bytes() if path.exists() else b""
        if raw.count(b"\n") >= count or time.monotonic() > deadline:
            return [orjson.loads(line) for line in raw.splitlines()]
        time.sleep(0.05)


def ask(client: anthropic.Anthropic, *, stream: bool) -> tuple[str, str]:
    """(request-id the client got, the answer's text)."""
    params: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 32,
                              "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        with client.messages.stream(**params) as s:
            text = s.get_final_text()
            return s.response.headers["request-id"], text
    raw = client.messages.with_raw_response.create(**params)
    message = raw.parse()
    return raw.headers["request-id"], "".join(b.text for b in message.content if b.type == "text")


def test_one_line_per_request_with_its_request_id_and_nothing_secret(logged: tuple[Gateway, Path]) -> None:
    gateway, path = logged
    secret = gateway.create_key("plain")
    client = gateway.client(secret)
    sent = [ask(client, stream=False), ask(client, stream=True)]
    refused = httpx.post(f"{gateway.url}/v1/messages", headers={"x-api-key": "tw-wrong"}, timeout=10,
                         json={"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []})
    assert refused.status_code == 401
    got = lines(path, 3)
    assert [g["request_id"] for g in got] == [sent[0][0], sent[1][0], refused.headers["request-id"]]
    ok, streamed, bad = got
    key_id = gateway.key_id("plain")
    assert (ok["status"], ok["stream"], ok["key_id"], ok["key_name"], ok["upstream"]) == (200, False, key_id,
                                                                                          "plain", "fake")
    assert ok["input_tokens"] > 0 and ok["output_tokens"] > 0 and ok["latency_ms"] > 0 and ok["tries"] == 1
    assert streamed["stream"] is True and streamed["ttfb_ms"] is not None
    assert (bad["status"], bad["error_type"], bad["key_id"]) == (401, "authentication_error", None)
    raw = path.read_text()
    assert secret not in raw and "tw-wrong" not in raw and "upstream-secret" not in raw
    assert PROMPT not in raw and all(answer not in raw for _, answer in sent if answer)
    assert "request_body" not in raw and "response_body" not in raw


def test_a_key_marked_for_it_logs_its_requests_and_answers(logged: tuple[Gateway, Path]) -> None:
    gateway, path = logged
    client = gateway.client(gateway.create_key("audited", log_bodies=True))
    plain = gateway.client(gateway.create_key("quiet"))
    (rid, answer), (srid, sanswer), (qrid, _) = (ask(client, stream=False), ask(client, stream=True),
                                                 ask(plain, stream=False))
    assert answer and sanswer
    got = {g["request_id"]: g for g in lines(path, 3)}
    whole = got[rid]
    assert whole["request_body"]["messages"] == [{"role": "user", "content": PROMPT}]
    assert whole["response_body"]["content"][0]["text"] == answer and whole["response_body"]["type"] == "message"
    streamed = got[srid]
    assert streamed["request_body"]["stream"] is True
    assert streamed["response_body"].startswith("event: message_start")
    assert "message_stop" in streamed["response_body"]
    assert "request_body" not in got[qrid] and "response_body" not in got[qrid]
