"""Chat Completions streams as Anthropic event streams: recorded streams against golden files, every way of
cutting them into pieces, hand-made edge cases, and random streams checked against the event grammar."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tollway.errors import UpstreamUnavailable
from tollway.protocol.sse import SSEDecoder
from tollway.providers.openai.names import ToolNames, inbound_id
from tollway.providers.openai.response import synthetic_signature
from tollway.providers.openai.stream import StreamTranslator

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
RECORDED = sorted((FIXTURES / "openai").glob("*.sse"))
GOLDEN = FIXTURES / "translation" / "stream"
ERRORS = {"groq_stream_error_event", "openrouter_stream_error_in_chunk"}
# Bigger recorded streams are cut at every byte once their repeated middle chunks are thinned out (see thin()).
THIN_ABOVE = 5_000
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded"}
Event = tuple[str, dict[str, Any]]


def translator(estimate: int = 1000, names: ToolNames | None = None) -> StreamTranslator:
    return StreamTranslator(model="claude-golden", names=names or ToolNames(), message_id="msg_golden",
                            input_estimate=estimate)


def run(pieces: list[bytes], t: StreamTranslator | None = None) -> list[bytes]:
    """All frames for an upstream body arriving in ``pieces``, as the provider drives the translator."""
    t = t or translator()
    frames = [t.start()]
    for piece in pieces:
        frames += t.feed(piece)
        if t.error_type is not None:
            return frames
    return frames + t.finish()


def decode(frames: list[bytes]) -> list[Event]:
    """The events of ``frames``, checking each is one whole ``event:``/``data:`` frame."""
    events = []
    for frame in frames:
        head, _, rest = frame.partition(b"\n")
        assert head.startswith(b"event: ") and rest.startswith(b"data: ") and rest.endswith(b"}\n\n"), frame
        assert rest.count(b"\n") == 2, frame
        name, data = head[7:].decode(), orjson.loads(rest[6:])
        assert data["type"] == name
        events.append((name, data))
    return events


def check_invariants(events: list[Event]) -> None:
    """The Anthropic event grammar, as the SDKs and Claude Code rely on it."""
    assert events and events[0][0] == "message_start"
    message = events[0][1]["message"]
    assert message["content"] == [] and message["stop_reason"] is None and message["role"] == "assistant"
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    delta_seen = ended = False
    for name, data in events[1:]:
        assert not ended, f"{name} after the end of the stream"
        if name == "ping":
            assert not delta_seen
        elif name == "content_block_start":
            assert open_index is None and not delta_seen, "a block starts while another is open"
            assert data["index"] == len(blocks), "block indexes must count 0, 1, 2 in start order"
            block = data["content_block"]
            assert block in ({"type": "text", "text": ""}, {"type": "thinking", "thinking": "", "signature": ""}) \
                or (block["type"] == "tool_use" and block["input"] == {} and block["id"] and block["name"])
            blocks.append({"type": block["type"], "deltas": []})
            open_index = data["index"]
        elif name == "content_block_delta":
            assert open_index is not None and data["index"] == open_index, "a delta for a block that is not open"
            block, delta = blocks[open_index], data["delta"]
            allowed = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"},
                       "tool_use": {"input_json_delta"}}[block["type"]]
            assert delta["type"] in allowed, f"{delta['type']} in a {block['type']} block"
            assert not any(d["type"] == "signature_delta" for d in block["deltas"]), "delta after the signature"
            value = next(v for k, v in delta.items() if k != "type")
            assert isinstance(value, str) and value, "empty delta"
            block["deltas"].append(delta)
        elif name == "content_block_stop":
            assert open_index is not None and data["index"] == open_index
            block = blocks[open_index]
            if block["type"] in ("text", "thinking"):
                key = "text" if block["type"] == "text" else "thinking"
                body = "".join(d[key] for d in block["deltas"] if key in d)
                assert body.strip(), f"blank {block['type']} block"
            if block["type"] == "thinking":
                assert block["deltas"][-1] == {"type": "signature_delta", "signature": synthetic_signature(body)}
            open_index = None
        elif name == "message_delta":
            assert open_index is None and not delta_seen
            delta_seen = True
            reason = data["delta"]["stop_reason"]
            assert reason in STOP_REASONS
            assert (data["delta"]["stop_sequence"] is not None) == (reason == "stop_sequence")
            if reason == "tool_use":
                assert any(b["type"] == "tool_use" for b in blocks), "tool_use without a tool_use block"
            usage = data["usage"]
            assert set(usage) == {"input_tokens", "output_tokens", "cache_creation_input_tokens",
                                  "cache_read_input_tokens"}
            assert all(isinstance(v, int) and v >= 0 for v in usage.values())
        elif name == "message_stop":
            assert delta_seen
            ended = True
        elif name == "error":
            assert not delta_seen
            assert set(data["error"]) == {"type", "message"} and data["error"]["message"]
            ended = True
        else:
            raise AssertionError(f"unknown event {name}")
    assert ended, "the stream has no end"


@dataclass
class Assembled:
    text: str = ""
    thinking: str = ""
    tools: list[tuple[str, str, str]] = field(default_factory=list)
    """(id, name, concatenated partial_json) per tool_use block, in block order."""
    stop_reason: str | None = None
    usage: dict[str, int] | None = None


def assemble(events: list[Event]) -> Assembled:
    out = Assembled()
    for name, data in events:
        if name == "content_block_start":
            block = data["content_block"]
            if block["type"] == "tool_use":
                out.tools.append((block["id"], block["name"], ""))
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                out.text += delta["text"]
            elif delta["type"] == "thinking_delta":
                out.thinking += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                tool_id, tool_name, args = out.tools[-1]
                out.tools[-1] = (tool_id, tool_name, args + delta["partial_json"])
        elif name == "message_delta":
            out.stop_reason, out.usage = data["delta"]["stop_reason"], data["usage"]
    return out


def thin(payload: bytes) -> bytes:
    """``payload`` with each run of like chunks (same delta fields, no finish, no usage) cut to its ends."""
    blocks = payload.split(b"\n\n")

    def shape(block: bytes) -> object:
        if not block.startswith(b"data: {"):
            return block
        chunk = orjson.loads(block[6:])
        choice = (chunk.get("choices") or [{}])[0]
        return (sorted(k for k, v in (choice.get("delta") or {}).items() if v), choice.get("finish_reason"),
                bool(chunk.get("usage")), bool(chunk.get("error")))

    shapes = [shape(b) for b in blocks]
    kept = [b for i, b in enumerate(blocks)
            if shapes[max(0, i - 3):i] != [shapes[i]] * 3 or shapes[i + 1:i + 4] != [shapes[i]] * 3]
    return b"\n\n".join(kept)


# -- recorded streams ------------------------------------------------------------------------------------

def test_every_recorded_stream_has_a_golden_file() -> None:
    assert [p.stem for p in RECORDED] == sorted(p.stem for p in GOLDEN.glob("*.json"))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_recorded_stream_matches_golden(path: Path) -> None:
    t = translator()
    events = decode(run([path.read_bytes()], t))
    assert [[name, data] for name, data in events] == json.loads((GOLDEN / f"{path.stem}.json").read_bytes())
    check_invariants(events)
    assert t.completed is (path.stem not in ERRORS)
    assert (t.error_type is not None) is (path.stem in ERRORS)


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_recorded_stream_cut_at_every_byte(path: Path) -> None:
    payload = path.read_bytes()
    if len(payload) > THIN_ABOVE:
        payload = thin(payload)
        assert len(payload) < 2 * THIN_ABOVE
    whole = run([payload])
    for cut in range(len(payload) + 1):
        assert run([payload[:cut], payload[cut:]]) == whole, f"cut at byte {cut}"


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_recorded_stream_one_byte_at_a_time(path: Path) -> None:
    payload = path.read_bytes()
    assert run([payload[i:i + 1] for i in range(len(payload))]) == run([payload])


@pytest.mark.parametrize(("name", "usage"), [("groq_stream_error_event", (1000, 0)),
                                             ("openrouter_stream_error_in_chunk", (43, 10))])
def test_after_an_error_nothing_more(name: str, usage: tuple[int, int]) -> None:
    t = translator()
    run([(FIXTURES / "openai" / f"{name}.sse").read_bytes()], t)
    assert (t.error_type, t.completed) == ("invalid_request_error", False)
    assert (t.usage.input_tokens, t.usage.output_tokens) == usage  # OpenRouter's error chunk carries usage
    assert t.feed(b'data: {"choices":[{"delta":{"content":"more"}}]}\n\n') == []
    assert t.finish() == [] and t.ping() == b""


# -- hand-made streams -------------------------------------------------------------------------------------

def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
            **extra}


def call(index: int | None, call_id: str | None = None, name: str | None = None,
         args: str | None = None) -> dict[str, Any]:
    """A ``tool_calls`` item; a None leaves its key out, as servers do."""
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    return {k: v for k, v in (("index", index), ("id", call_id), ("type", "function"), ("function", function))
            if v is not None}


def calls(*items: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return chunk({"tool_calls": list(items)}, finish)


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n" for c in chunks)


def events_of(*chunks: dict[str, Any] | str, t: StreamTranslator | None = None) -> list[Event]:
    events = decode(run([sse(*chunks)], t))
    check_invariants(events)
    return events


def shape(events: list[Event]) -> list[str]:
    """Compact view: block starts by type, deltas by type, and the other event names."""
    def one(name: str, data: dict[str, Any]) -> str:
        if name == "content_block_start":
            return f"start {data['index']} {data['content_block']['type']}"
        if name == "content_block_delta":
            return f"{data['index']} {data['delta']['type']} {[*data['delta'].values()][-1]}"
        if name == "content_block_stop":
            return f"stop {data['index']}"
        return f"delta {data['delta']['stop_reason']}" if name == "message_delta" else name

    return [one(name, data) for name, data in events]


TEXT = chunk({"content": "Hi"})
STOP = chunk(finish="stop")


def test_message_start_once_and_nothing_after_the_end() -> None:
    t = translator()
    frames = t.feed(sse(TEXT))  # start() was not called: feed sends message_start itself
    assert decode(frames)[0][0] == "message_start" and t.start() == b""
    assert [n for n, _ in decode([t.ping()])] == ["ping"]
    frames += t.feed(sse(STOP, "[DONE]"))
    assert [n for n, _ in decode(frames)].count("message_start") == 1 and t.completed
    assert t.feed(sse(TEXT, STOP, "[DONE]")) == [] and t.finish() == [] and t.ping() == b""
    # Before message_start, a ping brings it along: two frames in one write.
    assert [e.event for e in SSEDecoder().feed(translator().ping())] == ["message_start", "ping"]


@pytest.mark.parametrize("body", [b"", sse(TEXT), sse(TEXT, chunk(usage={"prompt_tokens": 3})) + b"data: {\"cho"])
def test_cut_off_stream_is_an_upstream_failure(body: bytes) -> None:
    t = translator()
    t.start()
    t.feed(body)
    with pytest.raises(UpstreamUnavailable):
        t.finish()
    assert not t.completed


def test_usage_object_is_updated_in_place_and_estimate_kept_until_reported() -> None:
    t = translator(estimate=123)
    usage = t.usage
    assert decode([t.start()])[0][1]["message"]["usage"]["input_tokens"] == 123
    t.feed(sse(TEXT, chunk(usage={"completion_tokens": 4})))
    assert (usage.input_tokens, usage.output_tokens, t.usage_reported) == (123, 4, True)
    # vLLM's continuous usage: every chunk carries the running totals; the last wins.
    t.feed(sse(chunk(usage={"prompt_tokens": 9, "completion_tokens": 5}), chunk(finish="stop", usage=None)))
    assert t.usage is usage and (usage.input_tokens, usage.output_tokens) == (9, 5)


def test_thinking_text_thinking_text_gives_four_blocks() -> None:
    # Both reasoning fields in one delta (vLLM has sent the same text twice) count once.
    events = events_of(chunk({"reasoning_content": "a", "reasoning": "a"}), chunk({"content": "b"}),
                       chunk({"reasoning": "c"}), chunk({"content": "d"}), STOP)
    assert (assemble(events).thinking, assemble(events).text) == ("ac", "bd")
    assert [s for s in shape(events) if s.startswith("start")] == [
        "start 0 thinking", "start 1 text", "start 2 thinking", "start 3 text"]


def test_text_after_a_call_opens_a_new_block() -> None:
    events = events_of(TEXT, calls(call(0, "call_1", "Read", "{}")), chunk({"content": "Done."}), STOP)
    assert [s for s in shape(events) if s.startswith("start")] == ["start 0 text", "start 1 tool_use", "start 2 text"]
    assert assemble(events).stop_reason == "tool_use"  # "stop" with a call made (Ollama, llama.cpp)


def test_sequential_calls_go_out_as_they_arrive() -> None:
    t = translator()
    t.feed(sse(calls(call(0, "call_a", "Read", ""))))
    assert shape(decode(t.feed(sse(calls(call(0, args='{"p": 1}')))))) == ['0 input_json_delta {"p": 1}']
    # The first call's arguments are whole: the second call's block starts at once.
    assert shape(decode(t.feed(sse(calls(call(1, "call_b", "Read", '{"p"')))))) == [
        "stop 0", "start 1 tool_use", '1 input_json_delta {"p"']


def test_interleaved_calls_keep_their_own_arguments() -> None:
    t = translator()
    frames = t.feed(sse(calls(call(0, "call_a", "Read", '{"path": '), call(1, "call_b", "Bash", '{"command": '))))
    # The second call waits while the first call's arguments are unfinished; the first's fragments go out at once.
    assert shape(decode(frames)) == ["message_start", "start 0 tool_use", '0 input_json_delta {"path": ']
    assert shape(decode(t.feed(sse(calls(call(1, args='"ls"}')))))) == []
    assert shape(decode(t.feed(sse(calls(call(0, args='"a.txt"')))))) == ['0 input_json_delta "a.txt"']
    frames = t.feed(sse(calls(call(0, args="}"))))
    assert shape(decode(frames)) == ["0 input_json_delta }", "stop 0", "start 1 tool_use",
                                     '1 input_json_delta {"command": ', '1 input_json_delta "ls"}']
    ending = decode(t.feed(sse(chunk(finish="tool_calls"))) + t.finish())
    assert shape(ending) == ["stop 1", "delta tool_use", "message_stop"]


def test_text_arriving_during_unfinished_arguments_waits_for_them() -> None:
    events = events_of(calls(call(0, "call_a", "Write", '{"content": "x')), chunk({"content": "Writing."}),
                       calls(call(0, args='y"}')), chunk(finish="tool_calls"))
    assert shape(events)[1:7] == ["start 0 tool_use", '0 input_json_delta {"content": "x', '0 input_json_delta y"}',
                                  "stop 0", "start 1 text", "1 text_delta Writing."]


def test_unfinished_arguments_are_closed_at_the_end() -> None:
    events = events_of(calls(call(0, "call_a", "Bash", '{"command": "ls')), chunk({"content": "after"}),
                       calls(call(1, "call_b", "Read", "{}")), chunk(finish="length"))
    assert [s for s in shape(events) if s.startswith(("start", "delta"))] == [
        "start 0 tool_use", "start 1 text", "start 2 tool_use", "delta max_tokens"]
    assert assemble(events).tools[0][2] == '{"command": "ls'


WHOLE = call(0, "call_a", "Bash", '{"command":"ls"}')


@pytest.mark.parametrize(("chunks", "expected"), [
    pytest.param([calls(WHOLE), calls(WHOLE)], [("call_a", "Bash", '{"command":"ls"}')], id="whole-call-sent-twice"),
    pytest.param([calls(WHOLE), calls(call(0, "call_b", "Bash", "{}"))],
                 [("call_a", "Bash", '{"command":"ls"}'), ("call_b", "Bash", "{}")], id="index-reused-by-a-new-call"),
    pytest.param([calls(call(None, "call_a", "Read", '{"p":')), calls(call(None, "call_a", args=" 1}")),
                  calls(call(None, "call_b", "Read", "{}")), calls(call(None, args=""))],
                 [("call_a", "Read", '{"p": 1}'), ("call_b", "Read", "{}")], id="no-index-told-apart-by-id"),
    pytest.param([calls(call(0, "call_a", "Read", "{}")), TEXT, calls(call(0, args=" junk"))],
                 [("call_a", "Read", "{}")], id="late-fragment-after-whole-arguments-dropped"),
    pytest.param([chunk({"function_call": {"name": "f", "arguments": '{"a"'}}),
                  chunk({"function_call": {"arguments": ": 1}"}})],
                 [(inbound_id(None, "msg_golden:0"), "f", '{"a": 1}')], id="legacy-function-call"),
    pytest.param([calls(call(3, "7", "Read", "{}")), calls(call(4, None, "Bash", "{}"))],
                 [(inbound_id("7", "msg_golden:0"), "Read", "{}"), (inbound_id(None, "msg_golden:1"), "Bash", "{}")],
                 id="ids-anthropic-refuses-are-replaced"),
])
def test_tool_calls_told_apart(chunks: list[dict[str, Any]], expected: list[tuple[str, str, str]]) -> None:
    assert assemble(events_of(*chunks, chunk(finish="tool_calls"))).tools == expected


def test_names_are_restored() -> None:
    names = ToolNames()
    sent = names.outbound("mcp__files__read.file")
    events = events_of(calls(call(0, "call_a", sent, "{}")), STOP, t=translator(names=names))
    assert assemble(events).tools == [("call_a", "mcp__files__read.file", "{}")]


@pytest.mark.parametrize(("chunks", "starts"), [
    pytest.param([chunk({"role": "assistant", "content": ""}), chunk({"content": None, "reasoning_content": ""}),
                  chunk({"content": " \n"}), chunk({"reasoning": "\t"}), chunk({"tool_calls": []})], [],
                 id="blank-deltas-open-nothing"),
    pytest.param([chunk({"content": "\n\n"}), chunk({"content": "Hi"})], ["start 0 text", "0 text_delta \n\nHi"],
                 id="leading-blank-joins-what-follows"),
    pytest.param([chunk({"reasoning_content": "plan"}), chunk({"content": "\n\n"}),
                  calls(call(0, "call_1", "Read", "{}"))], ["start 0 thinking", "start 1 tool_use"],
                 id="blank-between-thinking-and-call-dropped"),
])
def test_no_blank_blocks(chunks: list[dict[str, Any]], starts: list[str]) -> None:
    assert [s for s in shape(events_of(*chunks, STOP)) if s.startswith(("start", "0 text"))] == starts


@pytest.mark.parametrize(("finish", "extra", "expected"), [
    ("content_filter", {}, "refusal"),
    ("length", {}, "max_tokens"),
    ("stop", {"stop_reason": "###"}, "stop_sequence"),
    ("stop", {"stop_reason": 128001}, "end_turn"),
    ("tool_calls", {}, "end_turn"),
    ("weird", {}, "end_turn"),
])
def test_stop_reasons(finish: str, extra: dict[str, Any], expected: str) -> None:
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish, **extra}]}
    events = events_of(TEXT, end, "[DONE]")
    assert events[-2][1]["delta"] == {"stop_reason": expected, "stop_sequence": "###" if expected == "stop_sequence"
                                      else None}


def test_refusal_delta() -> None:
    events = events_of(chunk({"refusal": "I can't"}), chunk({"refusal": " help."}), STOP)
    assert (assemble(events).text, assemble(events).stop_reason) == ("I can't help.", "refusal")


def test_only_the_first_choice_counts() -> None:
    both = {"choices": [{"index": 1, "delta": {"content": "B"}}, {"index": 0, "delta": {"content": "A"}}]}
    assert assemble(events_of(both, STOP)).text == "A"


def test_sse_spellings() -> None:
    body = (b": keep-alive\r\n\r\ndata:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
            b"data:    {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n"
            b"data: not json\n\ndata:\n\nevent: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n\n"
            b"data: [1]\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n"
            b"data:  [DONE] \n\n")
    events = decode(run([body]))
    check_invariants(events)
    assert assemble(events).text == "abc"


@pytest.mark.parametrize(("body", "expected"), [
    (b"event: error\ndata: upstream exploded\n\n", ("api_error", "upstream exploded")),
    (b'event: error\ndata: {"message": "overloaded", "code": 503}\n\n', ("overloaded_error", "overloaded")),
    (b'data: {"error": {"code": 429, "message": "slow"}}\n\n', ("rate_limit_error", "slow")),
    (b'data: {"error": {"code": 500}}\n\n', ("api_error", "the upstream reported an error mid-stream")),
])
def test_error_events(body: bytes, expected: tuple[str, str]) -> None:
    t = translator()
    events = decode(run([sse(TEXT) + body + sse(TEXT, STOP, "[DONE]")], t))
    check_invariants(events)
    assert shape(events) == ["message_start", "start 0 text", "0 text_delta Hi", "error"]
    assert (events[-1][1]["error"]["type"], events[-1][1]["error"]["message"]) == expected
    assert t.error_type == expected[0] and not t.completed
