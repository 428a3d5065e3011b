"""End to end: the official SDK -> Tollway -> a fake OpenAI-compatible server, over loopback sockets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import Gateway
from tests.support.fake_openai import FakeOpenAIServer
from tollway.config import parse_config

TOOLS: list[Any] = [{"name": "Bash", "description": "Run a command",
                     "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                      "required": ["command"]}},
                    {"name": "Read", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def openai_side() -> Iterator[FakeOpenAIServer]:
    side = FakeOpenAIServer()
    yield side
    side.close()


@pytest.fixture(scope="module")
def gw(openai_side: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    db: Path = tmp_path_factory.mktemp("oa") / "t.db"
    raw = {
        "storage": {"url": f"sqlite:///{db}", "flush_interval": 0.05},
        "upstreams": [{"name": "oa", "kind": "openai", "base_url": openai_side.url + "/v1",
                       "api_keys": ["sk-upstream"], "family": "generic"},
                      {"name": "oa-pool", "kind": "openai", "base_url": openai_side.url + "/v1",
                       "api_keys": ["sk-revoked", "sk-good"], "family": "generic"},
                      {"name": "mock", "kind": "mock"}],
        "models": [{"name": "claude-sonnet-4-6", "targets": [{"upstream": "oa", "model": "gpt-test"}]},
                   {"name": "claude-haiku-4-5-20251001", "targets": [{"upstream": "oa-pool", "model": "gpt-test"}]},
                   {"name": "claude-opus-4-6", "targets": [{"upstream": "oa", "model": "gpt-test"},
                                                           {"upstream": "mock", "priority": 2}]}],
    }
    gateway = Gateway(parse_config(raw, "openai e2e", {}))
    yield gateway
    gateway.server.close()


@pytest.fixture(autouse=True)
def fresh_health(gw: Gateway) -> Iterator[None]:
    # Upstream errors asked for by one test would rest the upstream for the next one.
    yield
    gw.services.health.reset()


@pytest.fixture(scope="module")
def sdk(gw: Gateway) -> anthropic.Anthropic:
    return gw.client(gw.create_key("oa"))


def say(text: str, scenario: str | None = None) -> list[Any]:
    suffix = f" [scenario:{scenario}]" if scenario else ""
    return [{"role": "user", "content": text + suffix}]


def tag() -> str:
    return "m" + uuid.uuid4().hex[:12]


def test_text_non_stream(sdk: anthropic.Anthropic, openai_side: FakeOpenAIServer, gw: Gateway) -> None:
    marker = tag()
    raw = sdk.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=100, system="be brief",
                                                messages=say(marker))
    message = raw.parse()
    assert message.model == "claude-sonnet-4-6"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == f"echo: {marker}"
    assert message.stop_reason == "end_turn"
    # prompt 50 with 20 cached: input_tokens + cache_read_input_tokens equals the upstream's prompt tokens.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        30, 20, 9)
    sent = openai_side.fake.find(marker)
    assert sent["model"] == "gpt-test"
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_tokens"] == 100
    headers = openai_side.fake.headers[openai_side.fake.received.index(sent)]
    assert headers["authorization"] == "Bearer sk-upstream"
    assert not any(h.startswith("anthropic-") or h == "x-api-key" for h in headers)
    row = gw.row(raw.headers["request-id"])
    assert (row.input_tokens, row.cache_read_input_tokens, row.output_tokens) == (30, 20, 9)
    assert (row.upstream, row.upstream_model, row.status) == ("oa", "gpt-test", 200)


def test_text_stream_through_sdk_helpers(sdk: anthropic.Anthropic, openai_side: FakeOpenAIServer, gw: Gateway) -> None:
    marker = tag()
    with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=say(marker)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert text == f"echo: {marker}"
    assert [b.type for b in final.content] == ["text"]
    assert final.usage.output_tokens == 9 and final.usage.cache_read_input_tokens == 20
    sent = openai_side.fake.find(marker)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    row = gw.row(request_id)
    assert (row.input_tokens, row.output_tokens, row.stream, row.error_type) == (30, 9, True, None)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call(sdk: anthropic.Anthropic, stream: bool) -> None:
    marker = tag()
    message: anthropic.types.Message
    if stream:
        with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=TOOLS,
                                 messages=say(marker)) as s:
            message = s.get_final_message()
    else:
        message = sdk.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=TOOLS, messages=say(marker))
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["tool_use"]  # no empty text block before it
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "Bash" and block.input == {"command": f"echo {marker}"}
    assert block.id


def test_tool_result_turn(sdk: anthropic.Anthropic, openai_side: FakeOpenAIServer) -> None:
    marker = tag()
    messages: list[Any] = [
        {"role": "user", "content": f"run it {marker}"},
        {"role": "assistant", "content": [{"type": "text", "text": "Running."},
                                          {"type": "tool_use", "id": "toolu_01A", "name": "Bash",
                                           "input": {"command": "echo hi"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": f"hi {marker}"},
                                     {"type": "text", "text": "what did it say?"}]},
    ]
    with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=TOOLS, messages=messages) as s:
        final = s.get_final_message()
    sent = openai_side.fake.find(f"run it {marker}")
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == sent["messages"][2]["tool_call_id"] == "toolu_01A"
    assert orjson.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"command": "echo hi"}
    assert final.content[0].type == "text" and final.content[0].text == f"The tool said: hi {marker}"


def test_parallel_tool_calls_recorded_stream(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=TOOLS,
                             messages=say("weather", "sse:parallel_tool_calls_stream")) as s:
        final = s.get_final_message()
    tools = [b for b in final.content if b.type == "tool_use"]
    assert len(tools) == 2
    assert all(isinstance(b.input, dict) and b.input for b in tools)
    assert len({b.id for b in tools}) == 2
    assert final.stop_reason == "tool_use"


def test_reasoning_becomes_thinking(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=2048,
                             thinking={"type": "enabled", "budget_tokens": 1024},
                             messages=say("think", "sse:deepseek_reasoning_stream")) as s:
        final = s.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds[0] == "thinking" and "text" in kinds
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature


@pytest.mark.parametrize(("scenario", "status", "error_type"), [
    ("error:429:error_429_openrouter_provider_rate_limited", 429, "rate_limit_error"),
    ("error:400:error_400_context_length_exceeded", 400, "invalid_request_error"),
    ("error:401:error_401_invalid_api_key", 502, "api_error"),
    ("error:404:error_404_model_not_found", 404, "not_found_error"),
    ("error:500:error_500_server_error", 500, "api_error"),
])
def test_upstream_errors_in_anthropic_shape(gw: Gateway, sdk: anthropic.Anthropic, scenario: str, status: int,
                                            error_type: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": say("x", scenario)}
    r = httpx.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": sdk.api_key or ""})
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["type"] == "error" and payload["error"]["type"] == error_type
    assert payload["request_id"] == r.headers["request-id"]
    assert "sk-" not in r.text
    if status == 429:
        assert r.headers["retry-after"] == "3"
    if status == 400:
        assert payload["error"]["message"].startswith("prompt is too long")


def sse_events(raw: bytes) -> list[str]:
    return [line[7:] for line in raw.decode().splitlines() if line.startswith("event: ")]


@pytest.mark.parametrize("scenario", ["sse:openrouter_stream_error_in_chunk", "sse:groq_stream_error_event", "die:4"])
def test_mid_stream_failure_ends_with_one_error_event(gw: Gateway, sdk: anthropic.Anthropic, scenario: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True, "messages": say("x", scenario)}
    r = httpx.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": sdk.api_key or ""}, timeout=30)
    events = sse_events(r.content)
    assert events[0] == "message_start"
    assert events.count("error") == 1 and events[-1] == "error"
    assert "message_stop" not in events
    row = gw.row(r.headers["request-id"])
    assert row.error_type is not None and row.status == 200


def test_pings_while_the_upstream_is_silent(gw: Gateway, sdk: anthropic.Anthropic) -> None:
    provider = gw.services.table.providers["oa"]
    provider.ping_interval = 0.1
    try:
        body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True, "messages": say("x", "silent:0.5")}
        r = httpx.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": sdk.api_key or ""}, timeout=30)
    finally:
        provider.ping_interval = 10.0
    events = sse_events(r.content)
    assert events.count("ping") >= 2
    assert events[0] == "message_start" and events[-1] == "message_stop"


def test_count_tokens_is_a_local_estimate(sdk: anthropic.Anthropic, openai_side: FakeOpenAIServer) -> None:
    before = len(openai_side.fake.received)
    short = sdk.messages.count_tokens(model="claude-sonnet-4-6", messages=say("hello"))
    long = sdk.messages.count_tokens(model="claude-sonnet-4-6", messages=say("hello " * 500), tools=TOOLS)
    assert 0 < short.input_tokens < long.input_tokens
    assert 500 <= long.input_tokens < 1000
    assert len(openai_side.fake.received) == before  # no upstream call


def test_a_refused_key_rests_alone_and_the_other_key_serves(gw: Gateway, sdk: anthropic.Anthropic,
                                                            openai_side: FakeOpenAIServer) -> None:
    openai_side.fake.refused_keys.add("sk-revoked")
    # Keys are drawn at random: send until the revoked one has been tried once; every request succeeds.
    for _ in range(30):
        message = sdk.messages.create(model="claude-haiku-4-5-20251001", max_tokens=10, messages=say("x"))
        assert message.content
        if any(h.get("authorization") == "Bearer sk-revoked" for h in openai_side.fake.headers):
            break
    pool = next(u for u in httpx.get(f"{gw.url}/healthz").json()["upstreams"] if u["upstream"] == "oa-pool")
    assert pool["state"] == "ok" and pool["keys"][0]["resting_s"] > 0 and pool["keys"][1]["resting_s"] == 0


def test_an_openai_stream_dying_before_its_first_byte_fails_over(gw: Gateway, sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="claude-opus-4-6", max_tokens=50, messages=say("x", "die:0")) as s:
        final = s.get_final_message()
        request_id = s.response.headers["request-id"]
    assert final.id.startswith("msg_mock_")
    row = gw.row(request_id)
    assert row.tries is not None
    assert [(t["upstream"], t["status"]) for t in orjson.loads(row.tries)] == [("oa", 502), ("mock", 200)]
