"""Incremental server-sent-events decoding and encoding (WHATWG event-stream rules).

The decoder takes bytes as they arrive from a socket, in pieces cut anywhere, and yields whole events.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str


class SSEDecoder:
    """Splits a byte stream into events; lines may end in LF, CRLF or CR, as the spec allows."""

    __slots__ = ("_buffer", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        # A CR at the end of a chunk may be the first half of a CRLF split across two chunks.
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        return [e for e in map(parse_block, self.feed_blocks(chunk)) if e is not None]

    def feed_blocks(self, chunk: bytes) -> list[bytes]:
        """The raw text of each event completed by ``chunk``: LF-separated lines, without the blank line.

        A caller that wants only some events can look at a block's first bytes before parsing it.
        """
        if not chunk:
            return []
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = (self._buffer + chunk if self._buffer else chunk).split(b"\n\n")
        self._buffer = blocks.pop()
        return blocks

    def close(self) -> list[ServerSentEvent]:
        """End of stream: an event whose last line lacks its terminator still counts.

        The spec would drop it, but the SDKs dispatch it, and recorded Anthropic streams end that way.
        """
        rest, self._buffer = self._buffer, b""
        event = parse_block(rest) if rest.strip() else None
        return [] if event is None else [event]


def parse_block(block: bytes) -> ServerSentEvent | None:
    """One event from its lines; None for a block of comments, or with no data (the spec dispatches none)."""
    name = ""
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        field, sep, value = raw.decode("utf-8", errors="replace").partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if not data:
        return None
    return ServerSentEvent(name or "message", "\n".join(data))


def encode_event(event: str, payload: object) -> bytes:
    """One frame with an ``event:`` line: the SDKs dispatch on it and drop data-only frames."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
