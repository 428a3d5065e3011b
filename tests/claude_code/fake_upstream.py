"""A scripted fake of the Anthropic Messages API, for driving the real Claude Code CLI.

The server runs on its own event loop in a daemon thread so that it keeps serving
while a test blocks on the ``claude`` subprocess, and so that it is independent of
whatever loop (if any) a test uses for the Tollway gateway it puts in between.

Script (see ``FakeUpstream._messages``):

* the first ``POST /v1/messages`` whose ``tools`` include ``Bash`` gets a streamed
  ``tool_use`` of ``Bash`` running ``echo <marker>``;
* the request that carries the ``tool_result`` for that ``tool_use_id`` gets a streamed
  text answer quoting the tool output;
* anything else on ``/v1/messages`` (side calls, haiku, non-streaming) gets a short
  valid answer in the shape that was asked for;
* ``/v1/messages/count_tokens`` answers a rough count; every other path is a 404 in
  the Anthropic error shape.

Every request is recorded, including the ones answered with 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["FakeUpstream", "RecordedRequest", "sse_event"]

BASH_TOOL = "Bash"
DEFAULT_TEXT = "OK."


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    # Path plus raw query string, exactly as received, so tests can assert on e.g. ``?beta=true``.
    path_qs: str
    # Header names are lower-cased; repeated headers are joined with ", " as HTTP allows.
    headers: dict[str, str]
    raw_body: bytes
    # ``None`` when the body is empty or not JSON.
    body: Any

    @property
    def path(self) -> str:
        return self.path_qs.split("?", 1)[0]

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    @property
    def tool_names(self) -> list[str]:
        if not isinstance(self.body, dict):
            return []
        return [t.get("name", "") for t in self.body.get("tools") or [] if isinstance(t, dict)]

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


@dataclass
class _Script:
    marker: str
    tool_use_id: str
    tool_use_sent: bool = False
    # Text of the tool_result Claude Code sent back; proof that the command really ran.
    tool_result_text: str | None = None
    tool_result_is_error: bool | None = None
    final_text: str | None = None


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with the ``event:`` line the Anthropic SDKs dispatch on."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _find_tool_result(body: dict[str, Any], tool_use_id: str) -> dict[str, Any] | None:
    # Only the last user turn counts: earlier turns would be replayed history.
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return None
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("tool_use_id") == tool_use_id:
            return block
    return None


def _rough_tokens(body: Any) -> int:
    # Claude Code only uses the number for context bookkeeping; a stable rough size suffices.
    return max(1, len(json.dumps(body)) // 4) if body is not None else 1


class FakeUpstream:
    """Threaded fake Anthropic upstream bound to 127.0.0.1 on an ephemeral port.

    Use as a context manager, or call ``start()`` / ``stop()``. ``marker`` defaults to a
    fresh random ``tollway-marker-<hex>`` so concurrent or repeated runs cannot pass on
    stale output.
    """

    def __init__(
        self,
        marker: str | None = None,
        *,
        expected_api_key: str | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        self.marker: str
        self.command: str
        self._script: _Script
        self.rearm(marker)
        # When set, requests whose x-api-key differs get a 401, so a gateway test can prove
        # the gateway swapped the client key for the upstream key.
        self.expected_api_key = expected_api_key
        # A small delay between SSE events makes the stream arrive in several TCP reads,
        # which exercises a proxy's incremental forwarding instead of one big write.
        self.chunk_delay = chunk_delay
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._msg_counter = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._astart())
            except BaseException as exc:
                failure.append(exc)
                self._loop.close()
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._astop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-anthropic-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("FakeUpstream did not start in time")
        if failure:
            raise RuntimeError("FakeUpstream failed to start") from failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("POST", "/v1/messages", self._messages)
        app.router.add_route("POST", "/v1/messages/count_tokens", self._count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_response_prepare.append(_add_request_id)
        # access_log off: the recording is the log, and aiohttp's would only add noise to pytest output.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def rearm(self, marker: str | None = None) -> None:
        """Start the tool script over with a fresh marker, for several CLI runs on one server."""
        self.marker = marker or f"tollway-marker-{secrets.token_hex(6)}"
        self.command = f"echo {self.marker}"
        self._script = _Script(marker=self.marker, tool_use_id=f"toolu_{secrets.token_hex(12)}")

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ----------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def tool_use_id(self) -> str:
        return self._script.tool_use_id

    @property
    def tool_use_sent(self) -> bool:
        return self._script.tool_use_sent

    @property
    def tool_result_text(self) -> str | None:
        return self._script.tool_result_text

    @property
    def tool_result_is_error(self) -> bool | None:
        return self._script.tool_result_is_error

    @property
    def final_text(self) -> str | None:
        return self._script.final_text

    def dump(self) -> str:
        """Human-readable summary of the traffic, for assertion messages."""
        lines = []
        for r in self.requests:
            extra = ""
            if isinstance(r.body, dict):
                extra = f" model={r.model} stream={r.stream} tools={len(r.tool_names)}"
            lines.append(f"{r.method} {r.path_qs}{extra}")
        return "\n".join(lines) or "(no requests)"

    # ----------------------------------------------------------------- handlers

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        rec = RecordedRequest(
            method=request.method,
            path_qs=request.raw_path,
            headers=headers,
            raw_body=raw,
            body=body,
        )
        with self._lock:
            self._requests.append(rec)
        return rec

    def _auth_error(self, rec: RecordedRequest) -> web.Response | None:
        if self.expected_api_key is None or rec.headers.get("x-api-key") == self.expected_api_key:
            return None
        return web.json_response(
            _error_body("authentication_error", "invalid x-api-key"),
            status=401,
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        return web.json_response(
            _error_body("not_found_error", f"{rec.method} {rec.path} not found"),
            status=404,
        )

    async def _count_tokens(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if (err := self._auth_error(rec)) is not None:
            return err
        return web.json_response({"input_tokens": _rough_tokens(rec.body)})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if (err := self._auth_error(rec)) is not None:
            return err
        body = rec.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return web.json_response(
                _error_body("invalid_request_error", "body must be a JSON object with messages"),
                status=400,
            )
        model = str(body.get("model") or "claude-sonnet-4-6")
        input_tokens = _rough_tokens(body)
        script = self._script

        result_block = _find_tool_result(body, script.tool_use_id)
        if result_block is not None:
            output = _tool_result_text(result_block).strip()
            script.tool_result_text = output
            script.tool_result_is_error = bool(result_block.get("is_error", False))
            text = f"The command printed: {output}"
            script.final_text = text
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
            stop_reason = "end_turn"
        elif not script.tool_use_sent and BASH_TOOL in rec.tool_names:
            script.tool_use_sent = True
            blocks = [
                {
                    "type": "tool_use",
                    "id": script.tool_use_id,
                    "name": BASH_TOOL,
                    "input": {"command": self.command, "description": "Print the Tollway test marker"},
                }
            ]
            stop_reason = "tool_use"
        else:
            blocks = [{"type": "text", "text": DEFAULT_TEXT}]
            stop_reason = "end_turn"

        if rec.stream:
            return await self._stream(request, model, blocks, stop_reason, input_tokens)
        return web.json_response(self._message(model, blocks, stop_reason, input_tokens))

    # ----------------------------------------------------------------- responses

    def _next_message_id(self) -> str:
        self._msg_counter += 1
        return f"msg_fake{self._msg_counter:04d}{secrets.token_hex(8)}"

    def _message(self, model: str, blocks: list[dict[str, Any]], stop_reason: str, input_tokens: int) -> dict[str, Any]:
        return {
            "id": self._next_message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": _output_tokens(blocks)},
        }

    async def _stream(
        self,
        request: web.Request,
        model: str,
        blocks: list[dict[str, Any]],
        stop_reason: str,
        input_tokens: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        await resp.prepare(request)
        for chunk in self._stream_events(model, blocks, stop_reason, input_tokens):
            await resp.write(chunk)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    def _stream_events(
        self, model: str, blocks: list[dict[str, Any]], stop_reason: str, input_tokens: int
    ) -> Iterator[bytes]:
        start = self._message(model, [], stop_reason, input_tokens)
        start["stop_reason"] = None
        start["usage"]["output_tokens"] = 1
        yield sse_event("message_start", {"type": "message_start", "message": start})
        yield sse_event("ping", {"type": "ping"})
        for index, block in enumerate(blocks):
            yield from _block_events(index, block)
        yield sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": _output_tokens(blocks)},
            },
        )
        yield sse_event("message_stop", {"type": "message_stop"})


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # The real API tags every response with request-id; gateways commonly log or forward it.
    response.headers.setdefault("request-id", f"req_fake{secrets.token_hex(12)}")


def _output_tokens(blocks: list[dict[str, Any]]) -> int:
    return max(1, len(json.dumps(blocks)) // 4)


def _pieces(text: str, n: int) -> list[str]:
    # Split into n roughly equal non-empty parts; real streams split mid-token too.
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
    if block["type"] == "tool_use":
        yield sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
            },
        )
        for piece in _pieces(json.dumps(block["input"]), 4):
            yield sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
    else:
        yield sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        )
        for piece in _pieces(block["text"], 3):
            yield sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
    yield sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
