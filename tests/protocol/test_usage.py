"""Usage and outcome read from recorded streams and messages by StreamTap and usage_from_message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import pytest

from tollway.protocol.sse import encode_event
from tollway.protocol.usage import StreamTap, Usage, usage_from_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"

# (input, output) read by hand from each file: input from message_start (repeated, when it is, by
# message_delta), output from the last message_delta. Every recorded stream has zero cache tokens.
STREAM_USAGE = {
    "text_stream.sse": (10, 4),
    "redacted_thinking_stream.sse": (92, 189),
    "text_then_two_tool_use_stream.sse": (310, 84),
    "thinking_stream.sse": (46, 133),
    "thinking_stream_long.sse": (43, 282),
    "thinking_then_tool_use_stream.sse": (598, 92),
    "tool_use_stream.sse": (377, 65),
    "tool_use_truncated_max_tokens_stream.sse": (450, 124),
}
# These end in an unterminated message_stop: seen only when the stream is closed.
UNTERMINATED = {"tool_use_stream.sse", "tool_use_truncated_max_tokens_stream.sse"}


def tap_whole(payload: bytes, *, close: bool = True) -> StreamTap:
    tap = StreamTap()
    tap.feed(payload)
    if close:
        tap.close()
    return tap


def expected(input_tokens: int, output_tokens: int, cc: int = 0, cr: int = 0, c5m: int = 0, c1h: int = 0) -> Usage:
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_creation_input_tokens=cc,
                 cache_read_input_tokens=cr, cache_creation_5m=c5m, cache_creation_1h=c1h)


@pytest.mark.parametrize("name", sorted(STREAM_USAGE))
def test_stream_usage_from_fixture(name: str) -> None:
    payload = (FIXTURES / name).read_bytes()
    tap = tap_whole(payload)
    assert tap.usage == expected(*STREAM_USAGE[name])
    assert tap.completed is True
    assert tap.error is None


@pytest.mark.parametrize("name", sorted(STREAM_USAGE))
def test_stream_usage_byte_by_byte(name: str) -> None:
    payload = (FIXTURES / name).read_bytes()
    tap = StreamTap()
    for i in range(len(payload)):
        tap.feed(payload[i:i + 1])
    tap.close()
    assert tap.usage == expected(*STREAM_USAGE[name])
    assert tap.completed is True


@pytest.mark.parametrize("name", sorted(STREAM_USAGE))
def test_completed_needs_a_dispatched_message_stop(name: str) -> None:
    payload = (FIXTURES / name).read_bytes()
    # Before close, an unterminated message_stop has not been seen.
    assert tap_whole(payload, close=False).completed is (name not in UNTERMINATED)
    # Cut just before the message_stop event: the usage is all there, the end is not.
    cut = payload[:payload.index(b"event: message_stop")]
    tap = tap_whole(cut)
    assert tap.completed is False
    assert tap.usage == expected(*STREAM_USAGE[name])
    # Cut before the message_delta: only message_start's counts.
    start_only = tap_whole(payload[:payload.index(b"event: message_delta")])
    assert start_only.completed is False
    assert start_only.usage.input_tokens == STREAM_USAGE[name][0]
    assert start_only.usage.output_tokens < STREAM_USAGE[name][1]


def test_truncated_tool_use_stream_still_ends_with_message_stop() -> None:
    # The tool input is cut by max_tokens (no content_block_stop for index 1), but the stream itself ends properly.
    payload = (FIXTURES / "tool_use_truncated_max_tokens_stream.sse").read_bytes()
    assert payload.count(b"event: content_block_stop") == 1
    tap = tap_whole(payload)
    assert tap.completed is True
    assert tap.usage == expected(450, 124)


def test_message_start_output_is_replaced_by_message_delta() -> None:
    payload = (FIXTURES / "text_stream.sse").read_bytes()
    start_only = tap_whole(payload[:payload.index(b"event: content_block_start")])
    assert start_only.usage == expected(10, 2)  # message_start says output_tokens 2
    assert tap_whole(payload).usage.output_tokens == 4  # message_delta says 4: replaced, not 2 + 4


def test_error_event_is_captured() -> None:
    tap = tap_whole((FIXTURES / "error_event_docs_snippet.sse").read_bytes())
    assert tap.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert tap.completed is False
    assert tap.usage == Usage()


def test_error_after_content_keeps_usage_and_is_not_completed() -> None:
    text = (FIXTURES / "text_stream.sse").read_bytes()
    head = text[:text.index(b"event: message_delta")]
    error = b'event: error\ndata: {"type":"error","error":{"details":null,"type":"api_error","message":"x"}}\n\n'
    tap = tap_whole(head + error)
    assert tap.error == {"details": None, "type": "api_error", "message": "x"}
    assert tap.completed is False
    assert tap.usage == expected(10, 2)


def test_error_event_without_error_object() -> None:
    tap = tap_whole(b'event: error\ndata: {"type":"error"}\n\n')
    assert tap.error == {"type": "api_error"}


Frame = tuple[str, Mapping[str, object]]


def synthetic(*frames: Frame) -> bytes:
    return b"".join(encode_event(name, payload) for name, payload in frames)


def start(usage: Mapping[str, object]) -> Frame:
    return "message_start", {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": usage}}


def delta(usage: Mapping[str, object]) -> Frame:
    return "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}


STOP: Frame = ("message_stop", {"type": "message_stop"})


def test_cumulative_message_deltas_overwrite() -> None:
    tap = tap_whole(synthetic(start({"input_tokens": 7, "output_tokens": 1}),
                              delta({"output_tokens": 10}), delta({"output_tokens": 30}), STOP))
    assert tap.usage == expected(7, 30)
    assert tap.completed is True


def test_message_delta_repeating_input_overwrites_too() -> None:
    tap = tap_whole(synthetic(start({"input_tokens": 7, "output_tokens": 1}),
                              delta({"input_tokens": 9, "output_tokens": 3}), STOP))
    assert tap.usage == expected(9, 3)


def test_cache_counts_from_message_start_survive_a_bare_delta() -> None:
    usage = {"input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 100,
             "cache_read_input_tokens": 200,
             "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60}}
    tap = tap_whole(synthetic(start(usage), delta({"output_tokens": 50}), STOP))
    assert tap.usage == expected(5, 50, cc=100, cr=200, c5m=40, c1h=60)


def test_delta_repeating_cache_total_without_split_keeps_the_split() -> None:
    usage = {"input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 100,
             "cache_read_input_tokens": 0,
             "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60}}
    repeat = {"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 0, "output_tokens": 9}
    tap = tap_whole(synthetic(start(usage), delta(repeat), STOP))
    assert tap.usage == expected(5, 9, cc=100, c5m=40, c1h=60)


def test_cache_total_without_split_counts_as_5m() -> None:
    tap = tap_whole(synthetic(start({"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 77}), STOP))
    assert (tap.usage.cache_creation_input_tokens, tap.usage.cache_creation_5m, tap.usage.cache_creation_1h) == (
        77, 77, 0)


def test_non_integer_counts_are_ignored() -> None:
    tap = tap_whole(synthetic(start({"input_tokens": 7, "output_tokens": 1}),
                              delta({"input_tokens": None, "output_tokens": True}),
                              delta({"output_tokens": "12"}), STOP))
    assert tap.usage == expected(7, 1)


def test_bad_json_and_odd_shapes_do_not_break_the_tap() -> None:
    payload = (b"event: message_start\ndata: {not json\n\n"
               b"event: message_start\ndata: [1, 2]\n\n"
               b'event: message_start\ndata: {"message": "str"}\n\n'
               b'event: message_delta\ndata: {"usage": [1]}\n\n'
               + synthetic(start({"input_tokens": 3, "output_tokens": 1}), delta({"output_tokens": 2}), STOP))
    tap = tap_whole(payload)
    assert tap.usage == expected(3, 2)
    assert tap.completed is True


def test_content_events_are_not_read_for_usage() -> None:
    # A text delta that happens to carry a usage-looking object must not count.
    fake: Frame = ("content_block_delta", {"type": "content_block_delta", "usage": {"output_tokens": 999}})
    tap = tap_whole(synthetic(start({"input_tokens": 3, "output_tokens": 1}), fake, delta({"output_tokens": 2}), STOP))
    assert tap.usage == expected(3, 2)


def test_usage_from_message_cache_usage() -> None:
    usage = usage_from_message((FIXTURES / "message_cache_usage.json").read_bytes())
    assert asdict(usage) == {
        "input_tokens": 3,
        "output_tokens": 33,
        "cache_creation_input_tokens": 418,
        "cache_read_input_tokens": 1111,
        "cache_creation_5m": 418,
        "cache_creation_1h": 0,
    }


@pytest.mark.parametrize(
    ("name", "input_tokens", "output_tokens"),
    [("message_text.json", 12, 29), ("message_thinking.json", 69, 33), ("message_tool_use.json", 612, 101)],
)
def test_usage_from_message_fixtures(name: str, input_tokens: int, output_tokens: int) -> None:
    assert usage_from_message((FIXTURES / name).read_bytes()) == expected(input_tokens, output_tokens)


def test_usage_from_message_1h_split() -> None:
    body = (b'{"usage":{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":30,'
            b'"cache_read_input_tokens":4,"cache_creation":{"ephemeral_5m_input_tokens":10,'
            b'"ephemeral_1h_input_tokens":20}}}')
    assert usage_from_message(body) == expected(1, 2, cc=30, cr=4, c5m=10, c1h=20)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"null", b'{"usage": 5}', b'{"type":"message"}'])
def test_usage_from_message_garbage_is_zero(body: bytes) -> None:
    assert usage_from_message(body) == Usage()


def _delta(text: str) -> bytes:
    return encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": text}})


def test_a_cut_stream_counts_what_went_out_but_never_overrides_the_final_count() -> None:
    start = encode_event("message_start", {"type": "message_start", "message": {"usage": {
        "input_tokens": 10, "output_tokens": 1}}})
    cut = StreamTap()
    cut.feed(start + b"".join(_delta("x" * 40) for _ in range(5)))
    cut.cut()
    # Each delta is 153 bytes (without its blank line), 40 of them text: taken as 33 (the frame counted at its
    # longest), so the read's five make 165 characters, 42 tokens.
    assert cut.usage.output_tokens == 42
    counted = StreamTap()
    final = encode_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                           "usage": {"output_tokens": 7}})
    counted.feed(start + b"".join(_delta("x" * 40) for _ in range(5)) + final)
    counted.cut()  # message_stop lost, but message_delta gave the real count
    assert counted.usage.output_tokens == 7


def test_an_estimate_never_passes_max_tokens() -> None:
    tap = StreamTap(cap=16)
    tap.feed(b"".join(_delta("x" * 400) for _ in range(5)))
    tap.cut()
    assert tap.usage.output_tokens == 16


@pytest.mark.parametrize("start", [
    {"type": "message_start", "message": {"id": "m", "content": [], "usage": {"input_tokens": 11, "output_tokens": 1}}},
    # usage not the last key: the whole event is parsed instead
    {"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}, "content": []}},
    {"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 11, "output_tokens": 1}},
     "extra": {"a": 1}},
    # a "usage" key inside a string (escaped quotes) is never the match
    {"type": "message_start", "message": {"content": [{"type": "text", "text": '"usage":{"input_tokens":99}}}'}],
                                          "usage": {"input_tokens": 11, "output_tokens": 1}}},
])
@pytest.mark.parametrize("delta", [
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
    {"type": "message_delta", "usage": {"output_tokens": 7}, "delta": {"stop_reason": "end_turn",
                                                                      "stop_sequence": '"usage":{"output_tokens":1}'}},
])
def test_usage_is_read_whatever_the_key_order(start: dict[str, object], delta: dict[str, object]) -> None:
    tap = StreamTap()
    tap.feed(encode_event("message_start", start) + encode_event("message_delta", delta)
             + encode_event("message_stop", {"type": "message_stop"}))
    tap.close()
    assert (tap.usage.input_tokens, tap.usage.output_tokens, tap.counted, tap.completed) == (11, 7, True, True)
