"""Whole Chat Completions answers as Anthropic messages: recorded answers against golden files, each rule, and
agreement with the stream translation (recorded and random streams, assembled by the official SDK)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.providers.openai.test_stream import (
    ERRORS,
    Event,
    assemble,
    call,
    calls,
    check_invariants,
    chunk,
    decode,
    run,
    translator,
)
from tollway.errors import InvalidRequest, RateLimited, UpstreamUnavailable
from tollway.protocol.sse import SSEDecoder
from tollway.protocol.usage import Usage, estimate_tokens
from tollway.providers.openai.names import ToolNames, inbound_id
from tollway.providers.openai.response import (
    parse_arguments,
    repair_json,
    stop_reason,
    synthetic_signature,
    to_anthropic_message,
    usage_from_openai,
)
from tollway.providers.openai.stream import StreamTranslator

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
RECORDED = sorted((FIXTURES / "openai").glob("nonstream_*.json"))
ZERO_USAGE = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def translate(message: dict[str, Any], finish: str | None = "stop", usage: object = None,
              names: ToolNames | None = None, **choice: Any) -> dict[str, Any]:
    chat: dict[str, Any] = {"choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}]}
    if usage is not None:
        chat["usage"] = usage
    answer, _ = to_anthropic_message(chat, model="claude-x", names=names or ToolNames(), message_id="msg_1")
    return answer


def tool_call(name: str, arguments: object, call_id: str | None = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# -- recorded answers ------------------------------------------------------------------------------------

def test_every_recorded_answer_has_a_golden_file() -> None:
    assert [p.name for p in RECORDED] == sorted(p.name for p in (FIXTURES / "translation" / "response").glob("*.json"))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_recorded_answer_matches_golden(path: Path) -> None:
    chat = json.loads(path.read_bytes())
    expected = json.loads((FIXTURES / "translation" / "response" / path.name).read_bytes())
    answer, usage = to_anthropic_message(chat, model="claude-golden", names=ToolNames(), message_id="msg_golden")
    assert answer == expected
    assert usage.input_tokens == expected["usage"]["input_tokens"]
    assert usage.output_tokens == expected["usage"]["output_tokens"]
    assert usage.cache_read_input_tokens == expected["usage"]["cache_read_input_tokens"]
    # What Anthropic counts as the whole input is what the upstream counted.
    assert (usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
            == chat["usage"]["prompt_tokens"])


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_recorded_answer_is_a_valid_sdk_message(path: Path) -> None:
    answer, _ = to_anthropic_message(json.loads(path.read_bytes()), model="claude-golden", names=ToolNames(),
                                     message_id="msg_golden")
    message = anthropic.types.Message.model_validate(answer)
    assert message.to_dict() == answer


# -- usage -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ({"prompt_tokens": 71, "completion_tokens": 46, "prompt_tokens_details": {"cached_tokens": 0}}, (71, 46, 0, 0)),
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 60}}, (40, 5, 0, 60)),
    # DeepSeek's own fields, without prompt_tokens_details.
    ({"prompt_tokens": 339, "completion_tokens": 92, "prompt_cache_hit_tokens": 320,
      "prompt_cache_miss_tokens": 19}, (19, 92, 0, 320)),
    # OpenRouter in front of Anthropic: cache writes reported next to cache reads.
    ({"prompt_tokens": 1000, "completion_tokens": 9,
      "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 700}}, (100, 9, 700, 200)),
    ({"prompt_tokens": 50, "completion_tokens": 1, "prompt_tokens_details": {"cache_creation_tokens": 30}},
     (20, 1, 30, 0)),
    ({"prompt_tokens": 50, "completion_tokens": 1, "cache_write_tokens": 10}, (40, 1, 10, 0)),
    # More cached than prompted (a buggy upstream): clamped, never negative.
    ({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 20}}, (0, 1, 0, 20)),
    ({"prompt_tokens": "12", "completion_tokens": None, "prompt_tokens_details": None}, (0, 0, 0, 0)),
    ({"prompt_tokens": True, "completion_tokens": -3}, (0, 0, 0, 0)),
    (None, (0, 0, 0, 0)),
    ([], (0, 0, 0, 0)),
])
def test_usage_from_openai(raw: object, expected: tuple[int, int, int, int]) -> None:
    usage = usage_from_openai(raw)
    assert (usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens) == expected
    # Cache writes are priced as 5-minute writes, Anthropic's default lifetime.
    assert usage.cache_creation_5m == expected[2]
    assert usage.cache_creation_1h == 0


def test_answer_without_usage_estimates_its_output() -> None:
    # Some servers send no usage: the output is then billed at a length estimate, never as free.
    assert translate({"content": "hi"})["usage"] == {**ZERO_USAGE, "output_tokens": 1}
    usage = translate({"content": "x" * 40, "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": '{"a": "' + "y" * 30 + '"}'}}]})["usage"]
    assert usage["output_tokens"] == 20  # (40 + 39 characters) / 4, rounded up
    capped, _ = to_anthropic_message({"choices": [{"message": {"content": "x" * 400}, "finish_reason": "length"}]},
                                     model="m", names=ToolNames(), message_id="msg_1", max_output=16)
    assert capped["usage"]["output_tokens"] == 16  # an estimate never passes max_tokens


def test_usage_is_returned_with_the_message() -> None:
    _, usage = to_anthropic_message(
        {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 30, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 10}}},
        model="m", names=ToolNames(), message_id="msg_1")
    assert usage == Usage(input_tokens=20, output_tokens=2, cache_read_input_tokens=10)


# -- content ---------------------------------------------------------------------------------------------

def test_text_answer() -> None:
    answer = translate({"role": "assistant", "content": "Hello"})
    assert answer == {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                      "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
                      "stop_sequence": None, "usage": {**ZERO_USAGE, "output_tokens": 2}}


@pytest.mark.parametrize("content", [None, "", "   ", "\n\n", [], [{"type": "text", "text": " "}]])
def test_no_text_block_for_missing_or_blank_content(content: object) -> None:
    answer = translate({"content": content})
    assert answer["content"] == []
    assert answer["stop_reason"] == "end_turn"


def test_blank_content_next_to_a_tool_call_is_dropped() -> None:
    # Qwen-style "\n\n" before a tool call would be a blank text block Anthropic refuses on the next turn.
    answer = translate({"content": "\n\n", "tool_calls": [tool_call("Read", '{"path": "a"}')]},
                       finish="tool_calls")
    assert [b["type"] for b in answer["content"]] == ["tool_use"]


def test_block_order_is_thinking_text_tools() -> None:
    answer = translate({"content": "Reading both.", "reasoning_content": "I should read.",
                        "tool_calls": [tool_call("Read", '{"p": 1}', "call_a"),
                                       tool_call("Read", '{"p": 2}', "call_b")]}, finish="tool_calls")
    assert answer["content"] == [
        {"type": "thinking", "thinking": "I should read.", "signature": synthetic_signature("I should read.")},
        {"type": "text", "text": "Reading both."},
        {"type": "tool_use", "id": "call_a", "name": "Read", "input": {"p": 1}},
        {"type": "tool_use", "id": "call_b", "name": "Read", "input": {"p": 2}},
    ]
    assert answer["stop_reason"] == "tool_use"


def test_reasoning_field_used_when_reasoning_content_is_absent_or_empty() -> None:
    assert translate({"content": "x", "reasoning": "r"})["content"][0]["thinking"] == "r"
    assert translate({"content": "x", "reasoning_content": "", "reasoning": "r"})["content"][0]["thinking"] == "r"
    # Both present (vLLM has sent the same text in both): taken once.
    answer = translate({"content": "x", "reasoning_content": "same", "reasoning": "same"})
    assert [b["type"] for b in answer["content"]] == ["thinking", "text"]
    assert answer["content"][0]["thinking"] == "same"


def test_blank_reasoning_gives_no_thinking_block() -> None:
    assert [b["type"] for b in translate({"content": "x", "reasoning": "  \n"})["content"]] == ["text"]


def test_content_as_parts_with_mistral_thinking() -> None:
    content = [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
               {"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}, {"type": "image_url"}, "junk"]
    answer = translate({"content": content})
    assert answer["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": synthetic_signature("hmm")},
        {"type": "text", "text": "Hi there"},
    ]


def test_refusal_becomes_text_and_stop_reason_refusal() -> None:
    answer = translate({"content": None, "refusal": "I can't help with that."})
    assert answer["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert answer["stop_reason"] == "refusal"


def test_null_refusal_is_no_refusal() -> None:
    assert translate({"content": "ok", "refusal": None})["stop_reason"] == "end_turn"


# -- tool calls ------------------------------------------------------------------------------------------

def test_tool_names_are_restored() -> None:
    names = ToolNames()
    long_name = "mcp__some.server__" + "x" * 80
    sent = names.outbound(long_name)
    assert sent != long_name
    answer = translate({"tool_calls": [tool_call(sent, "{}")]}, finish="tool_calls", names=names)
    assert answer["content"][0]["name"] == long_name


def test_tool_ids_anthropic_cannot_take_are_replaced_the_same_way_every_time() -> None:
    answer = translate({"tool_calls": [tool_call("A", "{}", "0"), tool_call("B", "{}", None),
                                       tool_call("C", "{}", "call:x/1")]}, finish="tool_calls")
    ids = [b["id"] for b in answer["content"]]
    assert ids == [inbound_id("0", "msg_1:0"), inbound_id(None, "msg_1:1"), inbound_id("call:x/1", "msg_1:2")]
    assert all(i.startswith("toolu_") for i in ids)
    assert len(set(ids)) == 3
    assert translate({"tool_calls": [tool_call("A", "{}", "0")]})["content"][0]["id"] == ids[0]


def test_legacy_function_call() -> None:
    answer = translate({"content": None, "function_call": {"name": "f", "arguments": '{"a": 1}'}},
                       finish="function_call")
    assert answer["content"] == [{"type": "tool_use", "id": inbound_id(None, "msg_1:0"), "name": "f",
                                  "input": {"a": 1}}]
    assert answer["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"path": "a.txt"}', {"path": "a.txt"}),
    ("", {}),
    ("   ", {}),
    (None, {}),
    ({"already": "parsed"}, {"already": "parsed"}),
    ("[1, 2]", {}),
    ('"text"', {}),
    ("42", {}),
    ("null", {}),
    ("not json at all", {}),
    ('{"a": 1}}', {"a": 1}),  # trailing garbage
    ('{"a": 1} <|call_end|>', {"a": 1}),
    ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
    ('{"a": "hel', {"a": "hel"}),  # cut off inside a string
    ('{"a": "x\\', {"a": "x"}),  # ... right after a backslash
    ('{"a": 1,', {"a": 1}),
    ('{"a": 1, "b', {"a": 1}),  # half a key
    ('{"a": 1, "b":', {"a": 1}),
    ('{"a": 1, "b": tr', {"a": 1}),  # half a literal
    ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}),
    ('{"a": {"b": "c"}, "d": [', {"a": {"b": "c"}, "d": []}),
    ('"{\\"a\\": 1}"', {"a": 1}),  # encoded twice
    ('{"a": 1]', {}),  # mismatched bracket: no repair
    ('{"a": "\\ud800"} tail', {}),  # a lone surrogate could not be sent on
])
def test_parse_arguments(arguments: object, expected: dict[str, Any]) -> None:
    assert parse_arguments(arguments) == expected


def test_repair_json_gives_none_when_nothing_parses() -> None:
    assert repair_json("no brace") is None
    assert repair_json('{"a": 1]') is None


def test_invalid_arguments_still_give_an_object_input() -> None:
    answer = translate({"tool_calls": [tool_call("Bash", '{"command": "ls -la')]}, finish="length")
    assert answer["content"][0]["input"] == {"command": "ls -la"}
    assert answer["stop_reason"] == "max_tokens"


# -- stop reasons ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("finish", "tools", "expected"), [
    ("stop", False, "end_turn"),
    ("stop", True, "tool_use"),  # Ollama, llama.cpp
    ("tool_calls", True, "tool_use"),
    ("tool_calls", False, "end_turn"),  # never tool_use without a tool_use block
    ("function_call", False, "end_turn"),
    ("length", False, "max_tokens"),
    ("length", True, "max_tokens"),  # a cut-off call must not be run
    ("content_filter", False, "refusal"),
    ("content_filter", True, "refusal"),
    (None, False, "end_turn"),
    ("eos", False, "end_turn"),
    ("", False, "end_turn"),
])
def test_finish_reason_mapping(finish: str | None, tools: bool, expected: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if tools:
        message["tool_calls"] = [tool_call("f", "{}")]
    assert translate(message, finish=finish)["stop_reason"] == expected
    assert stop_reason(finish, tool_used=tools, refused=False) == expected


def test_stop_string_named_by_vllm() -> None:
    answer = translate({"content": "1, 2, 3"}, finish="stop", stop_reason="STOP")
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "STOP")
    # vLLM puts a stop token's id there: that is no stop sequence.
    answer = translate({"content": "x"}, finish="stop", stop_reason=151645)
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("end_turn", None)


# -- odd bodies ------------------------------------------------------------------------------------------

def test_first_choice_is_used() -> None:
    chat = {"choices": [{"index": 0, "message": {"content": "first"}, "finish_reason": "stop"},
                        {"index": 1, "message": {"content": "second"}, "finish_reason": "stop"}]}
    answer, _ = to_anthropic_message(chat, model="m", names=ToolNames(), message_id="msg_1")
    assert answer["content"] == [{"type": "text", "text": "first"}]


def test_error_in_a_200_body_is_raised() -> None:
    chat = {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-day"}, "choices": []}
    with pytest.raises(RateLimited, match="free-models-per-day"):
        to_anthropic_message(chat, model="m", names=ToolNames(), message_id="msg_1")
    with pytest.raises(InvalidRequest):
        to_anthropic_message({"error": {"code": 400, "message": "bad"}}, model="m", names=ToolNames(),
                             message_id="msg_1")


def test_body_without_choices_is_an_upstream_failure() -> None:
    with pytest.raises(UpstreamUnavailable):
        to_anthropic_message({"choices": []}, model="m", names=ToolNames(), message_id="msg_1")


# -- signatures ------------------------------------------------------------------------------------------

def test_synthetic_signature() -> None:
    signature = synthetic_signature("Let me think.")
    assert signature == "tollway1:" + hashlib.sha256(b"Let me think.").hexdigest()[:32]
    assert signature == synthetic_signature("Let me think.")
    assert signature != synthetic_signature("Let me think!")
    assert synthetic_signature("\ud800").startswith("tollway1:")


# -- the stream translation against this one ---------------------------------------------------------------

def sdk_message(events: list[Event]) -> dict[str, Any]:
    """The final message the official SDK builds from the events."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, data in events:
        if name != "ping":
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return snapshot.to_dict(exclude_none=True)


def non_stream_equivalent(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` a server would have answered without streaming: the chunks' deltas merged."""
    message: dict[str, Any] = {"role": "assistant", "content": "", "reasoning_content": ""}
    merged: dict[object, dict[str, Any]] = {}
    finish, usage = None, None
    for part in chunks:
        usage = part.get("usage") or usage
        for choice in part.get("choices") or []:
            delta = choice.get("delta") or {}
            message["content"] += delta.get("content") or ""
            message["reasoning_content"] += delta.get("reasoning_content") or delta.get("reasoning") or ""
            for item in delta.get("tool_calls") or []:
                merging = merged.setdefault(item["index"], {"id": item.get("id"), "type": "function",
                                                            "function": {"name": "", "arguments": ""}})
                function = item.get("function") or {}
                merging["function"]["name"] += function.get("name") or ""
                merging["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    if merged:
        message["tool_calls"] = list(merged.values())
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def chunks_of(payload: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e.data) for e in SSEDecoder().feed(payload + b"\n\n") if e.data.strip() != "[DONE]"]


STREAMS = sorted(p for p in (FIXTURES / "openai").glob("*.sse") if p.stem not in ERRORS)


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_sdk_builds_the_non_stream_answer(path: Path) -> None:
    payload = path.read_bytes()
    # An estimate of 0: streams without usage then report what the non-streamed answer reports.
    streamed = sdk_message(decode(run([payload], translator(estimate=0))))
    answer, _ = to_anthropic_message(non_stream_equivalent(chunks_of(payload)), model="claude-golden",
                                     names=ToolNames(), message_id="msg_golden")
    assert streamed == anthropic.types.Message.model_validate(answer).to_dict(exclude_none=True)


# Characters that stress JSON and SSE handling: quotes, backslashes, brackets, blanks, non-ASCII.
CHARS = st.sampled_from(list('ab Z\n\t"\\{}[],:é😊'))
PIECES = st.text(CHARS, max_size=5)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(CHARS, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=4), inner, max_size=3),
    max_leaves=6)


@dataclass
class Plan:
    """A random upstream stream, and what went into it."""

    names: ToolNames
    chunks: list[dict[str, Any]]
    pieces: list[bytes]
    text: str
    reasoning: str
    tools: list[tuple[str | None, str, str]]
    """(call id, client's name, arguments) in the order the calls first appear."""
    finish: str | None
    usage: dict[str, Any] | None


@st.composite
def plans(draw: st.DrawFn, canonical: bool = False) -> Plan:
    names = ToolNames()
    field_name = draw(st.sampled_from(["reasoning_content", "reasoning"]))
    text, reasoning = draw(st.lists(PIECES, max_size=6)), draw(st.lists(PIECES, max_size=6))
    steps: dict[object, list[tuple[str, dict[str, Any]]]] = {
        "reasoning": [("delta", {field_name: p}) for p in reasoning],
        "text": [("delta", {"content": p}) for p in text],
    }
    tools: dict[object, tuple[str | None, str, str]] = {}
    for i in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["Read", "Bash", "mcp__srv__do.thing", "tool_" + "x" * 70]))
        call_id = draw(st.sampled_from([f"call_{i}", None, str(i)]))
        args = json.dumps(draw(st.dictionaries(st.text(CHARS, max_size=6), JSON_VALUES, max_size=4)),
                          ensure_ascii=draw(st.booleans()))
        cuts = sorted(set(draw(st.lists(st.integers(1, len(args) - 1), max_size=4))))
        fragments = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)], strict=True)]
        style = draw(st.sampled_from(["empty", "absent", "bundled"]))  # OpenAI, vLLM, xAI/Ollama
        first = call(i, call_id, names.outbound(name), fragments.pop(0) if style == "bundled" else
                     "" if style == "empty" else None)
        steps[("tool", i)] = [("tool", first)] + [("tool", call(i, args=f)) for f in fragments]
        tools[("tool", i)] = (call_id, name, args)
    order: list[tuple[str, dict[str, Any]]] = []
    if canonical:
        for key in steps:
            order += steps[key]
    else:
        while keys := [k for k in steps if steps[k]]:
            order.append(steps[draw(st.sampled_from(keys))].pop(0))
    first_seen = list(dict.fromkeys(("tool", p["index"]) for kind, p in order if kind == "tool"))
    chunks: list[dict[str, Any]] = []
    for kind, payload in order:
        if kind == "delta":
            chunks.append(chunk(payload))
        elif len(chunks) > 0 and "tool_calls" in chunks[-1]["choices"][0]["delta"] and draw(st.booleans()):
            chunks[-1]["choices"][0]["delta"]["tool_calls"].append(payload)  # several calls in one chunk
        else:
            chunks.append(calls(payload))
    finish = draw(st.sampled_from(["stop", "tool_calls", "length", "content_filter", None]))
    if finish is not None:
        if len(chunks) > 0 and draw(st.booleans()):
            chunks[-1]["choices"][0]["finish_reason"] = finish  # content and finish in one chunk
        else:
            chunks.append(chunk(finish=finish))
    usage = draw(st.none() | st.fixed_dictionaries({
        "prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**5),
        "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 1000)})}))
    if usage is not None:
        if len(chunks) > 0 and draw(st.booleans()):
            chunks[-1]["usage"] = usage
        else:
            chunks.append({"choices": [], "usage": usage})  # OpenAI's include_usage chunk, after the finish
    frames = []
    for c in chunks:
        if draw(st.integers(0, 9)) == 0:
            frames.append(b": keep-alive\n\n")
        prefix = draw(st.sampled_from([b"data: ", b"data:", b"data:   "]))
        frames.append(prefix + orjson.dumps(c) + draw(st.sampled_from([b"\n\n", b"\r\n\r\n"])))
    if finish is None or draw(st.booleans()):
        frames.append(b"data: [DONE]\n\n")
    body = b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    return Plan(names, chunks, pieces, "".join(text), "".join(reasoning), [tools[k] for k in first_seen], finish,
                usage)


def without_trailing_blank(got: str, sent: str) -> bool:
    """Blank pieces with nothing visible after them are dropped; everything else arrives, in order."""
    if not sent.strip():
        return got == ""
    return sent.startswith(got) and not sent[len(got):].strip()


@given(plans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_streams_keep_the_grammar_and_the_content(plan: Plan) -> None:
    t = StreamTranslator(model="m", names=plan.names, message_id="msg_h", input_estimate=5)
    events = decode(run(plan.pieces, t))
    check_invariants(events)
    got = assemble(events)
    assert without_trailing_blank(got.text, plan.text)
    assert without_trailing_blank(got.thinking, plan.reasoning)
    assert got.tools == [(inbound_id(cid, f"msg_h:{i}"), name, args) for i, (cid, name, args) in enumerate(plan.tools)]
    expected_reason = {"length": "max_tokens", "content_filter": "refusal"}.get(
        plan.finish or "", "tool_use" if plan.tools else "end_turn")
    assert got.stop_reason == expected_reason
    if plan.usage is None:
        # No usage from the upstream: the output is estimated from the characters passed on.
        chars = len(plan.text) + len(plan.reasoning) + sum(len(args) for _, _, args in plan.tools)
        assert got.usage == {"input_tokens": 5, "output_tokens": estimate_tokens(chars),
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    else:
        cached = plan.usage["prompt_tokens_details"]["cached_tokens"]
        assert got.usage == {"input_tokens": max(0, plan.usage["prompt_tokens"] - cached),
                             "output_tokens": plan.usage["completion_tokens"], "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": cached}
    assert t.completed and t.error_type is None


@given(plans(canonical=True))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_streams_build_the_non_stream_answer_in_the_sdk(plan: Plan) -> None:
    t = StreamTranslator(model="claude-golden", names=plan.names, message_id="msg_golden", input_estimate=0)
    streamed = sdk_message(decode(run(plan.pieces, t)))
    answer, _ = to_anthropic_message(non_stream_equivalent(plan.chunks), model="claude-golden", names=plan.names,
                                     message_id="msg_golden")
    assert streamed == anthropic.types.Message.model_validate(answer).to_dict(exclude_none=True)
