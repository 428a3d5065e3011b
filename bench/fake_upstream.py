"""A fake Anthropic Messages API and OpenAI Chat Completions upstream for benchmarks: as cheap as aiohttp allows.

Every response body is serialised once per model name and then only joined around a fresh message id,
so the fake spends its CPU on HTTP and not on building JSON; that keeps it from stealing much of the
two cores from the process actually being measured.

- `POST /v1/messages` (JSON or SSE) and `POST /v1/messages/count_tokens`: Anthropic.
- `POST /v1/chat/completions` (JSON or `data:` chunk stream ending in `[DONE]`): OpenAI. The usage-only
  chunk is sent only with `"stream_options": {"include_usage": true}`, as OpenAI does.

Both answer the same text, with the same usage in each API's terms. Query strings are ignored.

With `--fail-rate P`, each well-formed `POST /v1/messages` (stream or not) is answered, with probability P
drawn from `random.Random(--seed)`, by HTTP 500 and Anthropic's error body
`{"type":"error","error":{"type":"api_error","message":"Internal server error"}}` instead of the answer.
The other endpoints never fail. On shutdown it prints how many messages requests it answered and failed.

With `--delta-interval-ms MS`, an Anthropic stream is a slow one, like a model writing: its head
(`message_start`, `content_block_start`, `ping`) at once, then `--deltas N` `content_block_delta` events
(default 10, cycling through the ten text pieces) with a sleep of MS before each, then the three closing
events. `bench/streams.py` uses it to hold thousands of streams open (`--deltas 20 --delta-interval-ms 1000`:
20 s each). `--frame-gap-ms` is then ignored for Anthropic streams.

    python bench/fake_upstream.py --port 18080 [--frame-gap-ms 0] [--fail-rate 0.2 --seed 1]
    python bench/fake_upstream.py --port 18080 --deltas 20 --delta-interval-ms 1000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
import uvloop
from aiohttp import web

_ID_PLACEHOLDER = b"msg_01PLACEHOLDERPLACEHOLDER"
_MAX_CACHED_MODELS = 64
"""Bounds each template cache if a client sends many distinct model names."""

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
_CREATED = 1767225600
"""OpenAI's `created` (unix seconds): fixed, since the templates are built once."""
_FINGERPRINT = "fp_bench0001"

_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}

_ids = itertools.count(1)
Parts = list[bytes]
"""A pre-serialised body split around every occurrence of the id placeholder: `msg_id.join(parts)`."""


def _usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": _INPUT_TOKENS,
        "cache_creation_input_tokens": _CACHE_CREATION_TOKENS,
        "cache_read_input_tokens": _CACHE_READ_TOKENS,
        "cache_creation": {"ephemeral_5m_input_tokens": _CACHE_CREATION_TOKENS, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _openai_usage() -> dict[str, Any]:
    # OpenAI counts cached tokens inside prompt_tokens and has no separate cache-write figure.
    prompt = _INPUT_TOKENS + _CACHE_CREATION_TOKENS + _CACHE_READ_TOKENS
    return {
        "prompt_tokens": prompt,
        "completion_tokens": _OUTPUT_TOKENS,
        "total_tokens": prompt + _OUTPUT_TOKENS,
        "prompt_tokens_details": {"cached_tokens": _CACHE_READ_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _split(blob: bytes) -> Parts:
    parts = blob.split(_ID_PLACEHOLDER)
    assert len(parts) > 1, "template lost its id placeholder"
    return parts


class Templates:
    """Pre-serialised Anthropic responses for one model name."""

    __slots__ = ("deltas", "head", "message", "stream", "stream_frames", "tail")

    def __init__(self, model: str) -> None:
        message = {
            "id": _ID_PLACEHOLDER.decode(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(_TEXT_PIECES)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": _usage(_OUTPUT_TOKENS),
        }
        self.message = _split(orjson.dumps(message))

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
        # Only message_start carries the id; the other frames split into one part, written verbatim.
        self.stream = _split(b"".join(frames))
        self.stream_frames = [f.split(_ID_PLACEHOLDER) for f in frames]
        # The slow mode's pieces: the three head frames, the delta frames (cycled), the three closing ones.
        self.head = _split(b"".join(frames[:3]))
        self.deltas = frames[3:-3]
        self.tail = b"".join(frames[-3:])


def _chat_head(model: str, obj: str) -> dict[str, Any]:
    return {"id": _ID_PLACEHOLDER.decode(), "object": obj, "created": _CREATED, "model": model}


_CHAT_TAIL = {"service_tier": "default", "system_fingerprint": _FINGERPRINT}


def _chat_chunks(model: str, include_usage: bool) -> list[bytes]:
    """Role chunk, one chunk per text piece, finish chunk, [usage-only chunk,] [DONE]."""
    head = {**_chat_head(model, "chat.completion.chunk"), **_CHAT_TAIL}
    # With include_usage, OpenAI's chunks carry `"usage": null` until the usage-only one.
    null_usage: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice], **null_usage}) + b"\n\n"

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": piece}) for piece in _TEXT_PIECES]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": _openai_usage()}) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


class ChatTemplates:
    """Pre-serialised OpenAI Chat Completions responses for one model name; every chunk carries the id."""

    __slots__ = ("completion", "streams")

    def __init__(self, model: str) -> None:
        text = "".join(_TEXT_PIECES)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        completion = {**_chat_head(model, "chat.completion"), "choices": [choice], "usage": _openai_usage()}
        self.completion = _split(orjson.dumps({**completion, **_CHAT_TAIL}))
        # Keyed by include_usage: (the whole stream, the same stream chunk by chunk).
        self.streams: dict[bool, tuple[Parts, list[Parts]]] = {}
        for include_usage in (False, True):
            chunks = _chat_chunks(model, include_usage)
            self.streams[include_usage] = (_split(b"".join(chunks)), [c.split(_ID_PLACEHOLDER) for c in chunks])


_T = TypeVar("_T")
_templates: dict[str, Templates] = {}
_chat_templates: dict[str, ChatTemplates] = {}


def _cached(cache: dict[str, _T], model: str, build: Callable[[str], _T]) -> _T:
    found = cache.get(model)
    if found is None:
        found = build(model)
        if len(cache) < _MAX_CACHED_MODELS:
            cache[model] = found
    return found


def _error(status: int, kind: str, message: str) -> web.Response:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return web.Response(status=status, body=body, headers=_JSON)


def _openai_error(status: int, kind: str, message: str) -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return web.Response(status=status, body=body, headers=_JSON)


def _next_id(prefix: str) -> tuple[bytes, str]:
    n = next(_ids)
    return f"{prefix}{n:016d}".encode(), f"req_01bench{n:016d}"


async def _payload(request: web.BaseRequest) -> dict[str, Any] | str:
    """The JSON body with a string `model`, or what is wrong with it."""
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return "body is not valid JSON"
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
        return "model: Field required"
    return payload


class FakeUpstream:
    def __init__(
        self, frame_gap: float, fail_rate: float = 0.0, seed: int = 1, deltas: int = 10, delta_interval: float = 0.0
    ) -> None:
        self.frame_gap = frame_gap
        self.deltas = deltas
        self.delta_interval = delta_interval
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.messages_answered = 0
        self.messages_failed = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return _error(405, "invalid_request_error", "method not allowed")
        # request.path excludes the query string, so ?beta=true and friends are ignored for free.
        if request.path == "/v1/messages":
            return await self.messages(request)
        if request.path == "/v1/chat/completions":
            return await self.chat(request)
        if request.path == "/v1/messages/count_tokens":
            body = await request.read()
            return web.Response(body=b'{"input_tokens":%d}' % max(1, len(body) // 4), headers=_JSON)
        return _error(404, "not_found_error", f"no route for {request.path}")

    async def messages(self, request: web.BaseRequest) -> web.StreamResponse:
        payload = await _payload(request)
        if isinstance(payload, str):
            return _error(400, "invalid_request_error", payload)
        tpl = _cached(_templates, payload["model"], Templates)
        msg_id, req_id = _next_id("msg_01bench")
        self.messages_answered += 1
        if self.fail_rate > 0 and self.rng.random() < self.fail_rate:
            self.messages_failed += 1
            failed = _error(500, "api_error", "Internal server error")
            failed.headers["request-id"] = req_id
            return failed
        if payload.get("stream") is not True:
            return web.Response(body=msg_id.join(tpl.message), headers={**_JSON, "request-id": req_id})
        if self.delta_interval > 0:
            return await self.slow_stream(request, {**_SSE, "request-id": req_id}, msg_id, tpl)
        return await self.stream(request, {**_SSE, "request-id": req_id}, msg_id, tpl.stream, tpl.stream_frames)

    async def slow_stream(
        self, request: web.BaseRequest, headers: dict[str, str], ident: bytes, tpl: Templates
    ) -> web.StreamResponse:
        """The head at once, then one delta per interval, then the end: a model writing slowly."""
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        await resp.write(ident.join(tpl.head))
        for i in range(self.deltas):
            await asyncio.sleep(self.delta_interval)
            await resp.write(tpl.deltas[i % len(tpl.deltas)])
        await resp.write(tpl.tail)
        await resp.write_eof()
        return resp

    async def chat(self, request: web.BaseRequest) -> web.StreamResponse:
        payload = await _payload(request)
        if isinstance(payload, str):
            return _openai_error(400, "invalid_request_error", payload)
        tpl = _cached(_chat_templates, payload["model"], ChatTemplates)
        chat_id, req_id = _next_id("chatcmpl-bench")
        if payload.get("stream") is not True:
            return web.Response(body=chat_id.join(tpl.completion), headers={**_JSON, "x-request-id": req_id})
        options = payload.get("stream_options")
        whole, frames = tpl.streams[isinstance(options, dict) and options.get("include_usage") is True]
        return await self.stream(request, {**_SSE, "x-request-id": req_id}, chat_id, whole, frames)

    async def stream(
        self, request: web.BaseRequest, headers: dict[str, str], ident: bytes, whole: Parts, frames: Sequence[Parts]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        if self.frame_gap <= 0:
            # One write: cheapest for the fake; the reader sees the stream in one or a few chunks.
            await resp.write(ident.join(whole))
        else:
            for i, parts in enumerate(frames):
                if i:
                    await asyncio.sleep(self.frame_gap)
                await resp.write(ident.join(parts))
        await resp.write_eof()
        return resp


async def serve(
    port: int, frame_gap: float, fail_rate: float = 0.0, seed: int = 1, deltas: int = 10, delta_interval: float = 0.0
) -> None:
    fake = FakeUpstream(frame_gap, fail_rate, seed, deltas, delta_interval)
    server = web.Server(fake.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
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
        print(f"messages answered {fake.messages_answered}, failed {fake.messages_failed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--frame-gap-ms",
        type=float,
        default=0.0,
        help="sleep between SSE frames, each frame its own write (0: the whole stream in one write)",
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="probability that a POST /v1/messages gets HTTP 500 api_error instead of its answer (default 0)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the --fail-rate draws (default 1)")
    parser.add_argument("--deltas", type=int, default=10,
                        help="text deltas per Anthropic stream in the slow mode (default 10)")
    parser.add_argument("--delta-interval-ms", type=float, default=0.0,
                        help="slow mode: sleep this long before each delta of an Anthropic stream (0: off)")
    args = parser.parse_args()
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be between 0 and 1")
    if args.deltas < 1:
        parser.error("--deltas must be at least 1")
    uvloop.run(serve(args.port, args.frame_gap_ms / 1000.0, args.fail_rate, args.seed, args.deltas,
                     args.delta_interval_ms / 1000.0))


if __name__ == "__main__":
    main()
