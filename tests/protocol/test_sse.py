"""SSEDecoder against the recorded Anthropic streams, cut at every byte, and the event-stream line rules."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from tollway.protocol.sse import ServerSentEvent, SSEDecoder, encode_event

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"
SSE_FILES = sorted(FIXTURES.glob("*.sse"))
# The longest recording: cutting it at every byte in three line-ending variants alone takes ~13 s.
LONG = "thinking_stream_long.sse"

# Events per file (counted with grep '^event:'); each recorded event has exactly one data line.
EVENT_COUNTS = {
    "error_event_docs_snippet.sse": 1,
    "redacted_thinking_stream.sse": 27,
    "text_stream.sse": 7,
    "text_then_two_tool_use_stream.sse": 23,
    "thinking_stream.sse": 17,
    "thinking_stream_long.sse": 118,
    "thinking_then_tool_use_stream.sse": 13,
    "tool_use_stream.sse": 15,
    "tool_use_truncated_max_tokens_stream.sse": 16,
}
# These two end with an unterminated "event: message_stop / data: ..." (no blank line, no final LF).
UNTERMINATED = {"tool_use_stream.sse", "tool_use_truncated_max_tokens_stream.sse"}


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def decode_whole(payload: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return decoder.feed(payload) + decoder.close()


def decode_pieces(pieces: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def oracle(text: str) -> list[ServerSentEvent]:
    """A plain, whole-text reading of the event-stream format, written independently of the decoder."""
    events: list[ServerSentEvent] = []
    name, data = "", list[str]()
    for line in [*re.split(r"\r\n|\r|\n", text), ""]:
        if line == "":
            if data:
                events.append(ServerSentEvent(name or "message", "\n".join(data)))
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return events


def variants(payload: bytes) -> dict[str, bytes]:
    return {"LF": payload, "CRLF": payload.replace(b"\n", b"\r\n"), "CR": payload.replace(b"\n", b"\r")}


def test_fixtures_are_lf_only() -> None:
    # The CRLF and CR variants below are made by rewriting LF; a stray CR in a recording would skew them.
    assert len(SSE_FILES) == len(EVENT_COUNTS)
    for path in SSE_FILES:
        assert b"\r" not in path.read_bytes(), path.name


@pytest.mark.parametrize("path", SSE_FILES, ids=ids(SSE_FILES))
def test_whole_file_matches_oracle_and_known_counts(path: Path) -> None:
    payload = path.read_bytes()
    events = decode_whole(payload)
    assert events == oracle(payload.decode("utf-8"))
    assert len(events) == EVENT_COUNTS[path.name]
    for event in events:
        assert event.event != "message"  # every recorded frame has an event: line
        data = orjson.loads(event.data)  # every data line is one JSON object, padding included
        assert data["type"] == event.event
    if path.name != "error_event_docs_snippet.sse":
        assert events[0].event == "message_start"
        assert events[-1].event == "message_stop"


@pytest.mark.parametrize("path", SSE_FILES, ids=ids(SSE_FILES))
def test_unterminated_last_event_only_comes_out_on_close(path: Path) -> None:
    decoder = SSEDecoder()
    fed = decoder.feed(path.read_bytes())
    closed = decoder.close()
    if path.name in UNTERMINATED:
        assert [e.event for e in closed] == ["message_stop"]
        assert len(fed) == EVENT_COUNTS[path.name] - 1
    else:
        assert closed == []
        assert len(fed) == EVENT_COUNTS[path.name]
    assert decoder.close() == []  # a second close has nothing left


@pytest.mark.parametrize("path", SSE_FILES, ids=ids(SSE_FILES))
def test_every_two_piece_split_gives_the_same_events(path: Path) -> None:
    whole = decode_whole(path.read_bytes())
    for ending, payload in variants(path.read_bytes()).items():
        assert decode_whole(payload) == whole, ending
        if ending != "LF" and path.name == LONG:
            # Cut near every line terminator and inside every multi-byte character; elsewhere every 97th byte.
            cuts = {i for i in range(len(payload) + 1) if b"\r" in payload[max(i - 3, 0):i + 3]}
            cuts |= set(range(0, len(payload) + 1, 97)) | {i for i, b in enumerate(payload) if b >= 0x80}
        else:
            cuts = set(range(len(payload) + 1))
        for i in sorted(cuts):
            got = decode_pieces([payload[:i], payload[i:]])
            assert got == whole, f"{ending} split at byte {i}"


@pytest.mark.parametrize("path", SSE_FILES, ids=ids(SSE_FILES))
def test_one_byte_at_a_time_gives_the_same_events(path: Path) -> None:
    whole = decode_whole(path.read_bytes())
    for ending, payload in variants(path.read_bytes()).items():
        got = decode_pieces([payload[i:i + 1] for i in range(len(payload))])
        assert got == whole, ending


def test_multibyte_utf8_split_inside_a_character() -> None:
    payload = 'event: content_block_delta\ndata: {"text":"Pelé ✓ 🦩"}\n\n'.encode()
    expected = [ServerSentEvent("content_block_delta", '{"text":"Pelé ✓ 🦩"}')]
    start = payload.index("é".encode())
    for i in range(start, len(payload)):
        assert decode_pieces([payload[:i], payload[i:]]) == expected


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(terminator: bytes) -> None:
    lines = [b"event: a", b"data: 1", b"", b"event: b", b"data: 2", b"data: 3", b"", b""]
    payload = terminator.join(lines)
    assert decode_whole(payload) == [ServerSentEvent("a", "1"), ServerSentEvent("b", "2\n3")]


def test_mixed_line_endings_in_one_stream() -> None:
    payload = b"event: a\r\ndata: 1\n\revent: b\rdata: 2\r\n\r\n"
    assert decode_whole(payload) == [ServerSentEvent("a", "1"), ServerSentEvent("b", "2")]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    # If the LF after a chunk-final CR were taken as a second line end, "a" and "b" would be two events.
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("message", "a\nb")]
    assert decoder.feed(b"\n") == []
    assert decoder.close() == []


def test_cr_then_cr_across_chunks_is_a_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\rdata: b\r\r") == [ServerSentEvent("message", "a"), ServerSentEvent("message", "b")]


def test_empty_chunk_between_cr_and_lf() -> None:
    # An empty read must not forget that the last chunk ended in CR.
    decoder = SSEDecoder()
    events = decoder.feed(b"data: a\r") + decoder.feed(b"") + decoder.feed(b"\ndata: b\r\n\r\n")
    assert events == [ServerSentEvent("message", "a\nb")]


def test_comments_are_ignored() -> None:
    payload = b": hello\n:\nevent: x\n: between fields\ndata: 1\n:data: not data\n\n: trailing\n\n"
    assert decode_whole(payload) == [ServerSentEvent("x", "1")]


def test_comment_only_stream_has_no_events() -> None:
    assert decode_whole(b": keep-alive\n\n: keep-alive\n\n") == []


def test_data_without_space_and_only_one_space_removed() -> None:
    payload = b"data:no-space\n\ndata:  two spaces\n\ndata\n\ndata:\n\n"
    assert decode_whole(payload) == [
        ServerSentEvent("message", "no-space"),
        ServerSentEvent("message", " two spaces"),
        ServerSentEvent("message", ""),
        ServerSentEvent("message", ""),
    ]


def test_event_without_space_and_default_name() -> None:
    payload = b"event:ping\ndata: {}\n\ndata: {}\n\n"
    assert decode_whole(payload) == [ServerSentEvent("ping", "{}"), ServerSentEvent("message", "{}")]


def test_multi_line_data_joined_with_newline() -> None:
    payload = b"event: e\ndata: first\ndata:\ndata: third\n\n"
    assert decode_whole(payload) == [ServerSentEvent("e", "first\n\nthird")]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    payload = b"event: one\ndata: 1\n\ndata: 2\n\n"
    assert [e.event for e in decode_whole(payload)] == ["one", "message"]


def test_unknown_fields_and_id_retry_are_ignored() -> None:
    payload = b"id: 7\nretry: 1000\nevent: e\nfoo: bar\ndata: 1\n\n"
    assert decode_whole(payload) == [ServerSentEvent("e", "1")]


def test_extra_blank_lines_dispatch_nothing() -> None:
    assert decode_whole(b"\n\n\ndata: 1\n\n\n\n") == [ServerSentEvent("message", "1")]


def test_close_flushes_a_partial_last_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}") == []
    assert decoder.close() == [ServerSentEvent("message_stop", '{"type":"message_stop"}')]


def test_close_with_nothing_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\n") == [ServerSentEvent("message", "1")]
    assert decoder.close() == []


def test_event_without_data_is_not_dispatched() -> None:
    # WHATWG: an empty data buffer dispatches nothing, and the event name does not carry over.
    assert decode_whole(b"event: ping\n\ndata: 1\n\n") == [ServerSentEvent("message", "1")]
    assert decode_whole(b"event: message_stop\n") == []


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "line1\nline2\r\nend é"}}),
        ("ping", {"type": "ping"}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ],
)
def test_encode_event_round_trips(event: str, payload: dict[str, object]) -> None:
    frame = encode_event(event, payload)
    assert frame.startswith(b"event: " + event.encode() + b"\ndata: ")
    assert frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 3  # newlines inside strings are escaped by JSON, so it is one data line
    decoded = decode_whole(frame)
    assert len(decoded) == 1
    assert decoded[0].event == event
    assert orjson.loads(decoded[0].data) == payload
    # Frames concatenate into a stream and cut anywhere like the recordings.
    stream = frame * 3
    for i in range(len(stream) + 1):
        assert decode_pieces([stream[:i], stream[i:]]) == decoded * 3
