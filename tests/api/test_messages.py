"""End to end: the official SDK -> Tollway -> a fake Anthropic upstream, over loopback sockets."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import FIXTURES, Gateway, Upstream, gateway_config
from tests.support.fake_anthropic import USAGE
from tollway.config import StorageConfig


def marker() -> str:
    return "m-" + uuid.uuid4().hex


def scenario(name: str) -> dict[str, str]:
    return {"x-fake-scenario": name}


def test_create_relays_body_and_headers_untouched(gateway: Gateway, upstream: Upstream,
                                                  client: anthropic.Anthropic) -> None:
    tag = marker()
    # SDK 2.x has no sampling parameters of its own any more; they travel as extra body fields.
    extra = {"output_config": {"effort": "high"}, "context_management": {"edits": [{"type": "x"}]},
             "brand_new_field": [1, 2.5, None, {"deep": tag}], "temperature": 0.5, "top_k": 3}
    response = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, system="be brief",
        messages=[{"role": "user", "content": f"hello {tag}"}], metadata={"user_id": "u1"},
        stop_sequences=["STOP"], extra_body=extra,
        extra_headers={"x-custom-client": "yes", "anthropic-beta": "claude-code-20250219,new-beta-2026"},
    )
    assert response.content[0].type == "text"
    assert response.content[0].text.startswith("echo: hello")
    assert response.usage.input_tokens == USAGE["input_tokens"]
    assert response._request_id is not None and response._request_id.startswith("req_")

    got = upstream.fake.for_request_id(tag)
    sent = {"model": "claude-sonnet-4-6", "max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": f"hello {tag}"}], "metadata": {"user_id": "u1"},
            "stop_sequences": ["STOP"], **extra}
    assert got.json == sent
    assert got.path == "/v1/messages"
    assert got.headers["x-custom-client"] == "yes"
    assert got.headers["anthropic-beta"] == "claude-code-20250219,new-beta-2026"
    assert got.headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert got.headers["x-api-key"] == "upstream-secret"
    assert "authorization" not in got.headers
    assert got.headers["user-agent"] == client.user_agent


def test_x_api_key_style_and_version_as_claude_code_sends(gateway: Gateway, upstream: Upstream, secret: str) -> None:
    tag = marker()
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": tag}]}
    r = httpx.post(f"{gateway.url}/v1/messages?beta=true", json=body,
                   headers={"x-api-key": secret, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    got = upstream.fake.for_request_id(tag)
    assert got.query == "beta=true"
    assert got.headers["anthropic-version"] == "2023-06-01"
    assert got.headers["x-api-key"] == "upstream-secret"


def test_hop_by_hop_headers_stay_at_the_gateway(gateway: Gateway, upstream: Upstream, secret: str) -> None:
    tag = marker()
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": tag}]}
    r = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={
        "x-api-key": secret, "expect": "100-continue", "connection": "keep-alive, X-Hop-Only", "x-hop-only": "1",
        "x-end-to-end": "2", "te": "trailers"})
    assert r.status_code == 200, r.text
    got = upstream.fake.for_request_id(tag).headers
    assert got["x-end-to-end"] == "2"
    assert not {"expect", "x-hop-only", "te"} & {name.lower() for name in got}


def test_missing_version_header_defaults(gateway: Gateway, upstream: Upstream, secret: str) -> None:
    tag = marker()
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": tag}]}
    r = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": secret})
    assert r.status_code == 200
    assert upstream.fake.for_request_id(tag).headers["anthropic-version"] == "2023-06-01"


def test_model_is_the_only_rewrite(upstream: Upstream, client: anthropic.Anthropic) -> None:
    tag = marker()
    client.messages.create(model="claude-haiku-4-5-20251001", max_tokens=5,
                           messages=[{"role": "user", "content": tag}], extra_body={"x_unknown": tag})
    got = upstream.fake.for_request_id(tag).json
    assert got == {"model": "upstream-haiku", "max_tokens": 5, "messages": [{"role": "user", "content": tag}],
                   "x_unknown": tag}


def test_stream_helpers_assemble_the_message(gateway: Gateway, upstream: Upstream,
                                             client: anthropic.Anthropic) -> None:
    tag = marker()
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                messages=[{"role": "user", "content": tag}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert text == f"echo: {tag}"
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == USAGE["output_tokens"]
    assert upstream.fake.for_request_id(tag).json["stream"] is True
    row = gateway.row(request_id)
    assert (row.status, row.error_type, row.stream) == (200, None, True)


STREAM_FIXTURES = ["text_stream", "tool_use_stream", "thinking_stream", "thinking_stream_long",
                   "redacted_thinking_stream", "thinking_then_tool_use_stream", "text_then_two_tool_use_stream"]


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_recorded_streams_pass_byte_for_byte(gateway: Gateway, secret: str, name: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body,
                      headers={"x-api-key": secret, **scenario(f"sse:{name}")}) as r:
        received = b"".join(r.iter_raw())
        assert r.headers["content-type"].startswith("text/event-stream")
    assert received == (FIXTURES / "anthropic" / f"{name}.sse").read_bytes()


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_recorded_streams_through_the_sdk(client: anthropic.Anthropic, name: str) -> None:
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=4096, messages=[{"role": "user", "content": "x"}],
                                extra_headers=scenario(f"sse:{name}")) as stream:
        final = stream.get_final_message()
    recorded = (FIXTURES / "anthropic" / f"{name}.sse").read_text()
    kinds = [b.type for b in final.content]
    assert kinds, "the final message has content"
    for kind in kinds:
        assert f'"type":"{kind}"' in recorded.replace(": ", ":").replace(" ", "")
    for block in final.content:
        if block.type == "tool_use":
            assert isinstance(block.input, dict) and block.id.startswith("toolu_")
        if block.type == "thinking":
            assert block.signature


def test_stream_usage_row_matches_upstream_figures(gateway: Gateway, secret: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{gateway.url}/v1/messages", json=body,
                   headers={"x-api-key": secret, **scenario("sse:thinking_stream_long")})
    row = gateway.row(r.headers["request-id"])
    # From the fixture: message_start says input 48 (no cache); the last message_delta says output 254.
    start, last_delta = _fixture_usage("thinking_stream_long")
    assert row.input_tokens == start["input_tokens"]
    assert row.output_tokens == last_delta["output_tokens"]
    assert row.cache_read_input_tokens == start.get("cache_read_input_tokens", 0)
    assert row.ttfb_ms is not None and row.latency_ms >= row.ttfb_ms


def _fixture_usage(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    start: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for line in (FIXTURES / "anthropic" / f"{name}.sse").read_text().splitlines():
        if line.startswith("data:"):
            data = orjson.loads(line[5:])
            if data.get("type") == "message_start":
                start = data["message"]["usage"]
            elif data.get("type") == "message_delta":
                last = data["usage"]
    return start, last


def test_non_stream_usage_row_has_cache_tiers(gateway: Gateway, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=5,
                                                   messages=[{"role": "user", "content": "x"}])
    row = gateway.row(raw.headers["request-id"])
    assert (row.input_tokens, row.output_tokens) == (31, 7)
    assert (row.cache_creation_input_tokens, row.cache_read_input_tokens) == (12, 1024)
    assert (row.cache_creation_5m, row.cache_creation_1h) == (8, 4)
    # Sonnet 4.6 list prices, per million: 31*$3 + 7*$15 + 8*$3.75 + 4*$6 + 1024*$0.30 = $559.2 -> $0.0005592.
    assert row.cost_nanousd == 559_200
    assert (row.model, row.upstream, row.upstream_model, row.stream) == ("claude-sonnet-4-6", "fake",
                                                                         "claude-sonnet-4-6", False)
    assert row.key_id == gateway.key_id("main")


def test_recorded_message_with_cache_usage(gateway: Gateway, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=5,
                                                   messages=[{"role": "user", "content": "x"}],
                                                   extra_headers=scenario("json:message_cache_usage"))
    message = raw.parse()
    assert message.usage.cache_read_input_tokens == 1111
    row = gateway.row(raw.headers["request-id"])
    assert (row.input_tokens, row.output_tokens, row.cache_creation_5m, row.cache_read_input_tokens) == (
        3, 33, 418, 1111)


def test_tools_and_tool_results(upstream: Upstream, client: anthropic.Anthropic) -> None:
    tag = marker()
    tools: list[Any] = [{"name": "get_weather", "description": "weather",
                         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                        {"type": "bash_20250124", "name": "bash"}]
    messages: list[Any] = [
        {"role": "user", "content": f"weather? {tag}"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
                                      "is_error": False}]},
    ]
    client.messages.create(model="claude-sonnet-4-6", max_tokens=50, tools=tools, messages=messages,
                           tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    got = upstream.fake.for_request_id(tag).json
    assert got["tools"] == tools and got["messages"] == messages
    assert got["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}

    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50, tools=tools,
                                messages=[{"role": "user", "content": "weather?"}],
                                extra_headers=scenario("sse:tool_use_stream")) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"location": "Paris"}


def test_thinking_request_and_answer(upstream: Upstream, client: anthropic.Anthropic) -> None:
    tag = marker()
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=2048,
                                     thinking={"type": "enabled", "budget_tokens": 1024},
                                     messages=[{"role": "user", "content": tag}],
                                     extra_headers=scenario("json:message_thinking"))
    assert message.content[0].type == "thinking" and message.content[0].signature
    assert upstream.fake.for_request_id(tag).json["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_count_tokens(upstream: Upstream, client: anthropic.Anthropic, gateway: Gateway) -> None:
    tag = marker()
    raw = client.messages.with_raw_response.count_tokens(model="claude-sonnet-4-6",
                                                         messages=[{"role": "user", "content": tag}])
    count = raw.parse()
    got = upstream.fake.for_request_id(tag)
    assert got.path == "/v1/messages/count_tokens"
    assert count.input_tokens == len(got.body) // 4
    row = gateway.row(raw.headers["request-id"])
    assert (row.endpoint, row.status) == ("count_tokens", 200)

    beta_tag = marker()
    beta = client.beta.messages.count_tokens(model="claude-sonnet-4-6",
                                             messages=[{"role": "user", "content": beta_tag}])
    got = upstream.fake.for_request_id(beta_tag)
    assert beta.input_tokens > 0
    assert "token-counting-2024-11-01" in got.headers["anthropic-beta"]


def test_beta_messages(upstream: Upstream, client: anthropic.Anthropic) -> None:
    tag = marker()
    client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": tag}],
                                betas=["context-management-2025-06-27"])
    assert upstream.fake.for_request_id(tag).headers["anthropic-beta"] == "context-management-2025-06-27"


def test_bearer_and_x_api_key_both_work(gateway: Gateway, secret: str) -> None:
    sdk = anthropic.Anthropic(auth_token=secret, base_url=gateway.url, max_retries=0)
    assert sdk.messages.create(model="mock-model", max_tokens=5, messages=[{"role": "user", "content": "a"}]).id
    body = {"model": "mock-model", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}]}
    assert httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": secret}).status_code == 200
    r = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 200


def test_seed_example_request(client: anthropic.Anthropic) -> None:
    # The seed page's example body, with max_tokens above the thinking budget as the API requires.
    seed: dict[str, Any] = dict(
        model="claude-sonnet-4-6", max_tokens=2048, system="<string>", metadata={"user_id": "<string>"},
        stop_sequences=["<string>"], extra_body={"temperature": 1, "top_p": 0.5, "top_k": 1}, stream=False,
        tools=[{"name": "get_x", "input_schema": {}, "description": "<string>"}],
        tool_choice={"type": "auto", "name": "<string>"},
        thinking={"type": "enabled", "budget_tokens": 1025},
        messages=[{"role": "user", "content": "Hello, Claude!"}],
        extra_headers=scenario("json:message_text"),
    )
    message = client.messages.create(**seed)
    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason in ("end_turn", "max_tokens", "stop_sequence", "tool_use", None)
    for field in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        assert isinstance(getattr(message.usage, field), int)


def test_mock_upstream_answers_like_the_api(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="mock-model", max_tokens=100, messages=[{"role": "user", "content": "ping"}])
    assert message.id.startswith("msg_mock_")
    assert "mock" in message.content[0].text.lower() if message.content[0].type == "text" else False
    tools: list[Any] = [{"name": "Bash", "input_schema": {"type": "object"}}]
    with client.messages.stream(model="mock-model", max_tokens=2048, tools=tools,
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=[{"role": "user", "content": "run"}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.stop_reason == "tool_use"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_thinking_signed_by_a_translated_upstream_never_reaches_anthropic(upstream: Upstream,
                                                                          client: anthropic.Anthropic) -> None:
    tag = marker()
    history: list[Any] = [
        {"role": "user", "content": f"first {tag}"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "tollway1:0f0f"},
                                          {"type": "text", "text": "answer"}]},
        {"role": "user", "content": "again"},
    ]
    client.messages.create(model="claude-sonnet-4-6", max_tokens=2048, messages=history,
                           thinking={"type": "enabled", "budget_tokens": 1024})
    got = upstream.fake.for_request_id(tag).json
    assert got["messages"][1]["content"] == [{"type": "text", "text": "answer"}]
    assert got["thinking"] == {"type": "enabled", "budget_tokens": 1024}



@pytest.fixture(params=["sqlite", "postgres"])
def own_gateway(request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway of this test's own: what it leaves held in its ledger must not reach other tests."""
    config = gateway_config(upstream.url, tmp_path / "own.db")
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_databases").create_migrated("own_gateway")
        config = dataclasses.replace(config, storage=StorageConfig(url=url, flush_interval=0.05))
    gateway = Gateway(config)
    try:
        yield gateway
    finally:
        gateway.server.close()


def test_a_model_name_with_a_nul_is_stored_without_it_and_stops_no_later_row(own_gateway: Gateway) -> None:
    gateway = own_gateway
    secret = gateway.create_key("nul")
    body = {"model": "claude\u0000sonnet", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    refused = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": secret}, timeout=30)
    assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found_error"
    served = httpx.post(f"{gateway.url}/v1/messages", json={**body, "model": "claude-sonnet-4-6"},
                        headers={"x-api-key": secret}, timeout=30)
    assert served.status_code == 200
    # PostgreSQL refuses NUL in text: the row must reach it without one, or no row after it would.
    assert gateway.row(refused.headers["request-id"]).model == "claude\ufffdsonnet"
    assert gateway.row(served.headers["request-id"]).model == "claude-sonnet-4-6"
    assert not gateway.services.ledger.outage.failing


def test_a_usage_row_the_database_cannot_hold_stops_no_other_row(own_gateway: Gateway) -> None:
    gateway = own_gateway
    secret = gateway.create_key("absurd")
    client = gateway.client(secret)
    body: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 8,
                            "messages": [{"role": "user", "content": "x"}]}
    # 10^17 output tokens priced at $15 a million: a cost past the 64-bit column that holds it.
    absurd = client.messages.with_raw_response.create(**body, extra_headers=scenario("usage:100000000000000000"))
    assert absurd.parse().usage.output_tokens == 10**17
    after = [client.messages.with_raw_response.create(**body) for _ in range(3)]
    stored = {r.request_id for r in gateway.usage()}
    assert {r.headers["request-id"] for r in after} <= stored
    assert absurd.headers["request-id"] not in stored
    health = gateway.services.ledger.health()
    assert health["held_requests"] == 1 and health["writing"] is True
