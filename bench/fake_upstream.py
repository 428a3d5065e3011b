"""A fake Anthropic Messages API upstream for benchmarks: as cheap as aiohttp allows.

Every response body is serialised once per model name and then only concatenated with a fresh message
id, so the fake spends its CPU on HTTP and not on building JSON; that keeps it from stealing much of the
two cores from the process actually being measured.

    python bench/fake_upstream.py --port 18080 [--frame-gap-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from typing import Any

import orjson
import uvloop
from aiohttp import web

_ID_PLACEHOLDER = "msg_01PLACEHOLDERPLACEHOLDER"
_MAX_CACHED_MODELS = 64
"""Bounds the template cache if a client sends many distinct model names."""

_TEXT_PIECES = (
    "Sure",
    " - here",
    " is a",
    " short",
    " answer",
    " that",
    " streams",
    " in ten",
    " small",
    " pieces.",
)
_INPUT_TOKENS = 42
_CACHE_CREATION_TOKENS = 512
_CACHE_READ_TOKENS = 2048
_OUTPUT_TOKENS = 31

_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}

_ids = itertools.count(1)


def _usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": _INPUT_TOKENS,
        "cache_creation_input_tokens": _CACHE_CREATION_TOKENS,
        "cache_read_input_tokens": _CACHE_READ_TOKENS,
        "cache_creation": {"ephemeral_5m_input_tokens": _CACHE_CREATION_TOKENS, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _split_on_id(blob: bytes) -> tuple[bytes, bytes]:
    head, sep, tail = blob.partition(_ID_PLACEHOLDER.encode())
    assert sep, "template lost its id placeholder"
    return head, tail


class Templates:
    """Pre-serialised responses for one model name, split around the message id."""

    __slots__ = ("message_head", "message_tail", "stream_frames", "stream_head", "stream_tail")

    def __init__(self, model: str) -> None:
        message = {
            "id": _ID_PLACEHOLDER,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(_TEXT_PIECES)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": _usage(_OUTPUT_TOKENS),
        }
        self.message_head, self.message_tail = _split_on_id(orjson.dumps(message))

        start = dict(message, content=[], stop_reason=None, usage=_usage(1))
        frames = [
            _frame("message_start", {"type": "message_start", "message": start}),
            _frame(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            _frame("ping", {"type": "ping"}),
        ]
        frames += [
            _frame(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
            for piece in _TEXT_PIECES
        ]
        final_usage = _usage(_OUTPUT_TOKENS)
        del final_usage["service_tier"], final_usage["cache_creation"]
        frames += [
            _frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _frame(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": final_usage,
                },
            ),
            _frame("message_stop", {"type": "message_stop"}),
        ]
        # Only message_start carries the id; the rest is written verbatim.
        self.stream_head, self.stream_tail = _split_on_id(b"".join(frames))
        first_head, first_tail = _split_on_id(frames[0])
        self.stream_frames = (first_head, first_tail, *frames[1:])


_templates: dict[str, Templates] = {}


def _templates_for(model: str) -> Templates:
    found = _templates.get(model)
    if found is None:
        found = Templates(model)
        if len(_templates) < _MAX_CACHED_MODELS:
            _templates[model] = found
    return found


def _error(status: int, kind: str, message: str) -> web.Response:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return web.Response(status=status, body=body, headers=_JSON)


def _next_id() -> tuple[bytes, str]:
    n = next(_ids)
    return f"msg_01bench{n:016d}".encode(), f"req_01bench{n:016d}"


class FakeUpstream:
    def __init__(self, frame_gap: float) -> None:
        self.frame_gap = frame_gap

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return _error(405, "invalid_request_error", "method not allowed")
        # request.path excludes the query string, so ?beta=true and friends are ignored for free.
        if request.path == "/v1/messages":
            return await self.messages(request)
        if request.path == "/v1/messages/count_tokens":
            body = await request.read()
            return web.Response(body=b'{"input_tokens":%d}' % max(1, len(body) // 4), headers=_JSON)
        return _error(404, "not_found_error", f"no route for {request.path}")

    async def messages(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "body is not valid JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            return _error(400, "invalid_request_error", "model: Field required")
        tpl = _templates_for(payload["model"])
        msg_id, req_id = _next_id()
        if payload.get("stream") is not True:
            return web.Response(
                body=tpl.message_head + msg_id + tpl.message_tail,
                headers={**_JSON, "request-id": req_id},
            )
        resp = web.StreamResponse(headers={**_SSE, "request-id": req_id})
        await resp.prepare(request)
        if self.frame_gap <= 0:
            # One write: cheapest for the fake; the reader sees the stream in one or a few chunks.
            await resp.write(tpl.stream_head + msg_id + tpl.stream_tail)
        else:
            first_head, first_tail, *rest = tpl.stream_frames
            await resp.write(first_head + msg_id + first_tail)
            for frame in rest:
                await asyncio.sleep(self.frame_gap)
                await resp.write(frame)
        await resp.write_eof()
        return resp


async def serve(port: int, frame_gap: float) -> None:
    server = web.Server(FakeUpstream(frame_gap).handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on http://127.0.0.1:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--frame-gap-ms",
        type=float,
        default=0.0,
        help="sleep between SSE frames, each frame its own write (0: the whole stream in one write)",
    )
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.frame_gap_ms / 1000.0))


if __name__ == "__main__":
    main()
