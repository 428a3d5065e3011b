"""Token usage as the upstream reports it, from a whole message or from a stream's events.

Streams carry usage twice: ``message_start`` has the input and cache counts, and each ``message_delta``
carries cumulative counts that replace (never add to) what came before, as the SDKs treat them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from tollway.protocol.sse import ServerSentEvent, SSEDecoder, parse_block

_SKIPPED = (b"event: content_block_", b"event: ping")
_DELTA = b"event: content_block_delta"
_USAGE_EVENTS = {b"event: message_start\ndata: ": "message_start", b"event: message_delta\ndata: ": "message_delta"}
_USAGE_HEAD = len(b"event: message_start\ndata: ")
# What follows the usage object when it is the last key: of the message, then of the event; of the event.
_USAGE_CLOSE = {"message_start": b"}}", "message_delta": b"}"}
assert all(len(head) == _USAGE_HEAD for head in _USAGE_EVENTS)
# The bytes of a delta event that are not its text: the event line and the JSON around the fragment (113 to
# 127 in Anthropic's streams, by delta type and index).
_DELTA_FRAME = 120
CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters of model output, for a reply whose real count never came."""
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0

    def update(self, raw: object) -> None:
        """Overwrite each count the upstream sent; leave the others as they were."""
        if not isinstance(raw, dict):
            return
        # Spelled out field by field, ``type(...) is int`` (JSON gives exact ints; it also keeps out bools):
        # twice a stream, and a loop with setattr cost three times as much.
        get = raw.get
        if type(value := get("input_tokens")) is int:
            self.input_tokens = value
        if type(value := get("output_tokens")) is int:
            self.output_tokens = value
        if type(creation := get("cache_creation_input_tokens")) is int:
            self.cache_creation_input_tokens = creation
        if type(value := get("cache_read_input_tokens")) is int:
            self.cache_read_input_tokens = value
        split = get("cache_creation")
        if isinstance(split, dict):
            five, hour = split.get("ephemeral_5m_input_tokens"), split.get("ephemeral_1h_input_tokens")
            if type(five) is int:
                self.cache_creation_5m = five
            if type(hour) is int:
                self.cache_creation_1h = hour
        elif type(creation) is int:
            # Without the split, Anthropic's default cache lifetime is 5 minutes.
            self.cache_creation_5m = self.cache_creation_input_tokens - self.cache_creation_1h


def usage_from_message(body: bytes) -> Usage:
    usage = Usage()
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage
    if isinstance(message, dict):
        usage.update(message.get("usage"))
    return usage


class StreamTap:
    """Watches an Anthropic SSE stream go by, keeping its usage and how it ended.

    Only ``message_start``, ``message_delta``, ``message_stop`` and ``error`` are looked at; the text
    and tool deltas that make up most of a stream are split into events but never JSON-decoded.
    """

    __slots__ = ("_decoder", "cap", "completed", "counted", "error", "sent", "usage")

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap
        """The request's ``max_tokens``: no estimate goes past it, since no model writes more."""
        self._decoder = SSEDecoder()
        self.usage = Usage()
        self.completed = False
        self.error: dict[str, Any] | None = None
        self.sent = 0
        """Output tokens the deltas so far hold, estimated from their size, for a stream cut short: the text
        bytes of each read's deltas (each less its frame) at `CHARS_PER_TOKEN`, at least one a delta."""
        self.counted = False
        """True once ``message_delta`` gave the final output count."""

    def feed(self, chunk: bytes) -> None:
        deltas = delta_bytes = 0
        for block in self._decoder.feed_blocks(chunk):
            # Most of a stream is deltas: recognised by their first bytes (deltas first, the most common), never
            # parsed, and neither are the block starts and stops or pings.
            if block.startswith(_DELTA):
                deltas += 1
                delta_bytes += len(block)
                continue
            if block.startswith(_SKIPPED):
                continue
            if block.startswith(b"event: message_stop"):
                self.completed = True
                continue
            # The two events with usage, as every upstream writes them (an event line, one data line): their
            # JSON is read straight from the bytes. Anything else, or bytes orjson refuses (which the general
            # path reads with replacement characters), goes the general way.
            name = _USAGE_EVENTS.get(block[:_USAGE_HEAD])
            if name is not None and block.count(b"\n") == 1:
                if self._usage_only(name, block):
                    continue
                try:
                    data = orjson.loads(block[_USAGE_HEAD:])
                except orjson.JSONDecodeError:
                    pass
                else:
                    self._take(name, data)
                    continue
            event = parse_block(block)
            if event is not None:
                self._see([event])
        if deltas:
            # Summed over a read's deltas rather than per delta: one estimate per read, not one per event.
            self.sent += max(deltas, estimate_tokens(delta_bytes - deltas * _DELTA_FRAME))

    def close(self) -> None:
        self._see(self._decoder.close())

    def cut(self) -> None:
        """The stream ended before its final usage: count the output that did go out, as estimated."""
        if not self.counted:
            sent = self.sent if self.cap is None else min(self.sent, self.cap)
            self.usage.output_tokens = max(self.usage.output_tokens, sent)

    def _see(self, events: list[ServerSentEvent]) -> None:
        for event in events:
            name = event.event
            if name == "message_stop":
                self.completed = True
            elif name in ("message_start", "message_delta", "error"):
                try:
                    data = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    continue
                self._take(name, data)

    def _usage_only(self, name: str, block: bytes) -> bool:
        """Read just the ``usage`` object of a ``message_start`` or ``message_delta`` written as Anthropic writes
        them, usage the last key (of the message, of the event): half the bytes to parse, and no dict of the
        rest. False, having read nothing, for any other layout: the slice then is no JSON value on its own
        (orjson refuses trailing bytes), or not a dict. A ``"usage":`` inside a string cannot be the match, since
        its quotes would be escaped."""
        at = block.rfind(b'"usage":')
        close = _USAGE_CLOSE[name]
        if at < 0 or not block.endswith(close):
            return False
        end = len(block) - len(close)
        try:
            usage = orjson.loads(block[at + 8:end])
        except orjson.JSONDecodeError:
            return False
        if not isinstance(usage, dict):
            return False
        self.usage.update(usage)
        if name == "message_delta":
            self.counted = True
        return True

    def _take(self, name: str, data: object) -> None:
        """What a ``message_start``, ``message_delta`` or ``error`` event's parsed data says."""
        if not isinstance(data, dict):
            return
        if name == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self.usage.update(message.get("usage"))
        elif name == "message_delta":
            self.usage.update(data.get("usage"))
            self.counted = True
        else:
            error = data.get("error")
            self.error = error if isinstance(error, dict) else {"type": "api_error"}
