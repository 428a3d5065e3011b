"""A Chat Completions stream, as the Anthropic event stream a client's SDK accepts.

What arrives is cut into *pieces*: reasoning text, answer text, and tool calls (a start, then argument
fragments, keyed by ``tool_calls[].index``). Each piece goes into a content block, with these rules:

* one block is open at a time, indexes count 0, 1, 2 in start order, each gets one start and one stop;
* a new kind of piece closes the open block and opens another, so text after a tool call, or reasoning
  after text, gets a block of its own; a thinking block gets its synthetic signature just before its stop;
* no block is blank: blank text or reasoning waits for something visible before a block opens for it, and
  is dropped if nothing follows;
* argument fragments go out as they arrive. A tool block stays open until its arguments are a whole JSON
  value, since a fragment can come only while its block is open: pieces that arrive for anything else in
  the meantime (parallel calls sent interleaved) wait, in order, and go out once it is whole, or at the end.

The stop reason and the usage go out only at ``[DONE]`` or at the end of the body, because OpenAI sends
usage in a chunk after the one with ``finish_reason``. An error reported in the stream (an ``error`` object
in a chunk, or an ``event: error``) becomes one Anthropic ``error`` event, and nothing follows it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import orjson

from tollway.errors import UpstreamUnavailable
from tollway.protocol.sse import ServerSentEvent, SSEDecoder, encode_event, parse_block
from tollway.protocol.usage import Usage, estimate_tokens
from tollway.providers.openai.errors import error_message, stream_error_type
from tollway.providers.openai.names import ToolNames, inbound_id
from tollway.providers.openai.response import (
    arguments_text,
    matched_stop_sequence,
    reasoning_of,
    split_content,
    stop_reason,
    synthetic_signature,
    usage_from_openai,
    usage_json,
)

_IN_STRING = re.compile(r'["\\]')
_OUTSIDE_STRING = re.compile(r'["{}\[\]]')
_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


class _Tool:
    """One tool call: what identifies it, and how far its arguments are from a whole JSON value."""

    __slots__ = ("call_id", "depth", "escaped", "fragments", "in_string", "index", "name", "ordinal", "sole", "started")

    def __init__(self, call_id: str | None, name: str | None, ordinal: int) -> None:
        self.call_id = call_id
        self.name = name
        self.ordinal = ordinal
        self.index: int | None = None
        """Its content block, once opened."""
        self.fragments = 0
        self.sole = ""
        """The first argument fragment, kept while it is the only one: to spot a whole call sent twice."""
        self.depth = 0
        self.started = self.in_string = self.escaped = False

    @property
    def whole(self) -> bool:
        """True once the arguments sent out so far make a whole JSON object or array."""
        return self.started and self.depth <= 0 and not self.in_string

    def scan(self, fragment: str) -> None:
        """Follow brackets and strings through ``fragment``, jumping between the characters that matter."""
        pos, end = 0, len(fragment)
        while pos < end:
            if self.escaped:
                self.escaped = False
                pos += 1
            elif self.in_string:
                match = _IN_STRING.search(fragment, pos)
                if match is None:
                    return
                pos = match.end()
                if match.group() == "\\":
                    self.escaped = True
                else:
                    self.in_string = False
            else:
                match = _OUTSIDE_STRING.search(fragment, pos)
                if match is None:
                    return
                pos = match.end()
                char = match.group()
                if char == '"':
                    self.in_string = True
                elif char in "{[":
                    self.depth += 1
                    self.started = True
                else:
                    self.depth -= 1


class _Piece(NamedTuple):
    kind: str
    """``text``, ``thinking`` or ``tool``."""
    text: str
    """The text, or the argument fragment (empty for the piece that starts a tool call)."""
    tool: _Tool | None = None


class _Open:
    """The block being written."""

    __slots__ = ("index", "kind", "thinking", "tool")

    def __init__(self, kind: str, index: int, tool: _Tool | None) -> None:
        self.kind = kind
        self.index = index
        self.tool = tool
        self.thinking: list[str] = []


class StreamTranslator:
    """Turns the bytes of one OpenAI stream into Anthropic SSE frames; one instance per response."""

    def __init__(self, *, model: str, names: ToolNames, message_id: str, input_estimate: int,
                 max_output: int | None = None) -> None:
        self.model = model
        self.names = names
        self.message_id = message_id
        self.usage = Usage(input_tokens=input_estimate)
        """The latest figures: the estimate until the upstream reports usage. Updated in place."""
        self.usage_reported = False
        """True once the upstream sent usage (some never do: vLLM and Ollama without ``include_usage``)."""
        self.sent_chars = 0
        """Characters of output passed on, to estimate its tokens when the upstream reports none."""
        self.max_output = max_output
        """The request's ``max_tokens``: an estimate never goes past it."""
        self.completed = False
        """True once ``message_stop`` was produced."""
        self.error_type: str | None = None
        """The Anthropic error type, when the upstream reported an error mid-stream."""
        self._decoder = SSEDecoder()
        self._started = False
        self._ended = False
        self._next_index = 0
        self._open: _Open | None = None
        self._tools: dict[object, _Tool] = {}
        self._last_tool: _Tool | None = None
        self._tool_count = 0
        self._waiting: list[_Piece] = []
        self._blank = {"text": "", "thinking": ""}
        self._finish_reason: str | None = None
        self._stop_sequence: str | None = None
        self._tool_used = False
        self._refused = False

    # -- the interface --------------------------------------------------------------------------------

    def start(self) -> bytes:
        """The ``message_start`` frame; b"" if it was already produced."""
        if self._started:
            return b""
        self._started = True
        message: dict[str, object] = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage_json(self.usage),
        }
        return encode_event("message_start", {"type": "message_start", "message": message})

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames that ``chunk`` (upstream SSE bytes, cut anywhere) completes."""
        out = [] if self._started else [self.start()]
        if self._ended:
            return out
        for block in self._decoder.feed_blocks(chunk):
            if block.startswith(b"data: ") and b"\n" not in block:
                # Nearly every chunk is one ``data:`` line: read it without the general SSE parse.
                self._data(block[6:], out)
            else:
                self._event(parse_block(block), out)
            if self._ended:
                break
        return out

    def finish(self) -> list[bytes]:
        """The closing frames, at the end of the upstream's body.

        Raises `UpstreamUnavailable` when the upstream stopped without ``finish_reason`` or ``[DONE]``: the
        answer was cut off, and ending it as ``end_turn`` would pass a partial answer off as whole.
        """
        out = [] if self._started else [self.start()]
        if self._ended:
            return out
        for event in self._decoder.close():
            self._event(event, out)
        if self._ended:
            return out
        if self._finish_reason is None:
            raise UpstreamUnavailable("the upstream ended the stream before finishing its answer")
        self._end_message(out)
        return out

    def ping(self) -> bytes:
        """A ``ping`` frame (after ``message_start`` if none went yet); b"" once the stream has ended."""
        if self._ended:
            return b""
        return self.start() + encode_event("ping", {"type": "ping"})

    # -- upstream events --------------------------------------------------------------------------------

    def _event(self, event: ServerSentEvent | None, out: list[bytes]) -> None:
        if event is None:
            return
        data = event.data.strip()
        if event.event == "error":
            # Groq: "event: error" with {"error": {...}}.
            try:
                payload: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                payload = {"message": data}
            self._fail(payload.get("error", payload) if isinstance(payload, dict) else payload, out)
            return
        self._data(data, out)

    def _data(self, data: str | bytes, out: list[bytes]) -> None:
        if data.strip() in ("[DONE]", b"[DONE]"):
            self._end_message(out)
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(chunk, dict):
            self._chunk(chunk, out)

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self._take_usage(chunk["usage"])
        if chunk.get("error"):
            # OpenRouter reports a failure mid-stream in a chunk of its own, with HTTP status 200.
            self._fail(chunk["error"], out)
            return
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            # A chunk that also ends the reply (fake streaming) has its content taken first.
            self._delta(delta, out)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish_reason = finish
            self._stop_sequence = matched_stop_sequence(choice)
            self._flush(out, force=True)
            self._close(out)

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        if len(delta) == 1 and type(delta.get("content")) is str:
            # The common case by far, a bare text delta, skips the general checks below.
            if delta["content"]:
                self._push(_Piece("text", delta["content"]), out)
            return
        text, part_reasoning = split_content(delta.get("content"))
        reasoning = reasoning_of(delta) or part_reasoning
        if reasoning:
            self._push(_Piece("thinking", reasoning), out)
        if text:
            self._push(_Piece("text", text), out)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refused = self._refused or bool(refusal.strip())
            self._push(_Piece("text", refusal), out)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_call(call, out)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            self._tool_call({"index": "function_call", "function": legacy}, out)

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        name = function.get("name") if isinstance(function.get("name"), str) and function.get("name") else None
        fragment = arguments_text(function.get("arguments"))
        index = call.get("index")
        tool: _Tool | None
        if isinstance(index, (int, str)) and not isinstance(index, bool):
            key: object = index
            tool = self._tools.get(key)
        elif call_id is not None:
            # No index: the id says which call (some servers send whole calls only).
            key = call_id
            tool = next((t for t in self._tools.values() if t.call_id == call_id), None)
        else:
            key = self._tool_count
            tool = self._last_tool
        if tool is None or (call_id and name and tool.call_id and call_id != tool.call_id):
            # A key not seen yet, or one reused by a call with a new id and name: a new call.
            tool = _Tool(call_id, name, self._tool_count)
            self._tool_count += 1
            self._tools[key] = tool
            self._push(_Piece("tool", "", tool), out)
        else:
            if (call_id == tool.call_id and name and tool.fragments == 1 and fragment == tool.sole
                    and _is_json(fragment)):
                return  # the same whole call again
            if tool.index is None:
                tool.call_id = tool.call_id or call_id
                tool.name = tool.name or name
        self._last_tool = tool
        if fragment:
            tool.fragments += 1
            tool.sole = fragment if tool.fragments == 1 else ""
            self._push(_Piece("tool", fragment, tool), out)

    def _take_usage(self, raw: dict[str, Any]) -> None:
        fresh = usage_from_openai(raw)
        keep_input = not isinstance(raw.get("prompt_tokens"), int)
        for field in _USAGE_FIELDS:
            if keep_input and field != "output_tokens":
                continue
            setattr(self.usage, field, getattr(fresh, field))
        self.usage_reported = True

    # -- blocks -----------------------------------------------------------------------------------------

    def _holds(self) -> bool:
        """True while the open block is a tool call whose arguments are not whole yet: others must wait."""
        return self._open is not None and self._open.tool is not None and not self._open.tool.whole

    def _is_open(self, piece: _Piece) -> bool:
        return self._open is not None and self._open.kind == piece.kind and self._open.tool is piece.tool

    def _push(self, piece: _Piece, out: list[bytes]) -> None:
        self.sent_chars += len(piece.text)
        if self._is_open(piece):
            self._write(piece, out)
            if self._waiting and not self._holds():
                self._flush(out, force=False)
        elif self._waiting or self._holds():
            self._waiting.append(piece)
        else:
            self._place(piece, out)

    def _flush(self, out: list[bytes], *, force: bool) -> None:
        """Place the waiting pieces, in order. Pieces for the open block go out even while others still wait;
        once one piece has to wait, the pieces after it wait too, so each block keeps its order. With
        ``force`` (the reply is over), a tool block whose arguments never became whole is closed anyway."""
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            placed = False
            for piece in waiting:
                if self._is_open(piece):
                    self._write(piece, out)
                    placed = True
                elif self._waiting or self._holds():
                    self._waiting.append(piece)
                else:
                    self._place(piece, out)
                    placed = True
            if not placed:
                if not force:
                    return
                self._close(out)

    def _place(self, piece: _Piece, out: list[bytes]) -> None:
        """Open a block for ``piece`` (which is not for the open block, and need not wait) and write it."""
        if piece.tool is not None:
            if piece.tool.index is not None:
                # Its block was closed once its arguments were whole: what comes after cannot be valid JSON.
                return
            self._close(out)
            self._begin(piece.kind, piece.tool, out)
            self._write(piece, out)
            return
        text = self._blank[piece.kind] + piece.text
        if not text.strip():
            self._blank[piece.kind] = text
            return
        self._blank[piece.kind] = ""
        self._close(out)
        self._begin(piece.kind, None, out)
        self._write(_Piece(piece.kind, text), out)

    def _begin(self, kind: str, tool: _Tool | None, out: list[bytes]) -> None:
        index = self._next_index
        self._next_index += 1
        block: dict[str, Any]
        if tool is not None:
            tool.index = index
            self._tool_used = True
            block = {"type": "tool_use", "id": inbound_id(tool.call_id, f"{self.message_id}:{tool.ordinal}"),
                     "name": self.names.inbound(tool.name or ""), "input": {}}
        elif kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "text", "text": ""}
        self._open = _Open(kind, index, tool)
        out.append(encode_event("content_block_start",
                                {"type": "content_block_start", "index": index, "content_block": block}))

    def _write(self, piece: _Piece, out: list[bytes]) -> None:
        open_ = self._open
        if open_ is None or not piece.text:
            return
        delta: dict[str, str]
        if piece.tool is not None:
            piece.tool.scan(piece.text)
            delta = {"type": "input_json_delta", "partial_json": piece.text}
        elif piece.kind == "thinking":
            open_.thinking.append(piece.text)
            delta = {"type": "thinking_delta", "thinking": piece.text}
        else:
            delta = {"type": "text_delta", "text": piece.text}
        out.append(encode_event("content_block_delta",
                                {"type": "content_block_delta", "index": open_.index, "delta": delta}))

    def _close(self, out: list[bytes]) -> None:
        open_, self._open = self._open, None
        if open_ is None:
            return
        if open_.kind == "thinking":
            delta = {"type": "signature_delta", "signature": synthetic_signature("".join(open_.thinking))}
            out.append(encode_event("content_block_delta",
                                    {"type": "content_block_delta", "index": open_.index, "delta": delta}))
        out.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": open_.index}))

    # -- endings ----------------------------------------------------------------------------------------

    def estimate_output(self) -> None:
        """With no usage from the upstream (some servers send none, and a cut stream never gets to it), the
        output is billed at an estimate from its length rather than as nothing."""
        if not self.usage_reported:
            estimate = estimate_tokens(self.sent_chars)
            if self.max_output is not None:
                estimate = min(estimate, self.max_output)
            self.usage.output_tokens = max(self.usage.output_tokens, estimate)

    def _end_message(self, out: list[bytes]) -> None:
        self._flush(out, force=True)
        self.estimate_output()
        self._close(out)
        reason = stop_reason(self._finish_reason, tool_used=self._tool_used, refused=self._refused,
                             stop_sequence=self._stop_sequence)
        delta = {"stop_reason": reason, "stop_sequence": self._stop_sequence if reason == "stop_sequence" else None}
        out.append(encode_event("message_delta", {"type": "message_delta", "delta": delta,
                                                  "usage": usage_json(self.usage)}))
        out.append(encode_event("message_stop", {"type": "message_stop"}))
        self.completed = True
        self._ended = True

    def _fail(self, error: object, out: list[bytes]) -> None:
        self.error_type = stream_error_type(error)
        message = error_message(error) or "the upstream reported an error mid-stream"
        out.append(encode_event("error", {"type": "error", "error": {"type": self.error_type, "message": message}}))
        self._ended = True


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True
