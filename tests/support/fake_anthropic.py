"""A fake Anthropic upstream that records what it receives and answers as a test tells it.

The scenario travels in the request header ``x-fake-scenario`` (Tollway forwards unknown headers), so
concurrent tests never share state:

- none: a text answer echoing the last user text, with usage ``USAGE``, streamed or not as asked;
- ``sse:NAME``: the recorded stream ``fixtures/anthropic/NAME.sse``, byte for byte, in small pieces;
- ``json:NAME``: the recorded message ``fixtures/anthropic/NAME.json``;
- ``error:STATUS:NAME``: that status with the recorded error body ``NAME.json`` (and ``retry-after: 7``);
- ``html:STATUS``: that status with a body no Anthropic client could parse;
- ``die:N``: a stream that sends N events and then drops the connection;
- ``hang``: a stream that sends ``message_start`` and then nothing, until its client leaves;
- ``slow:MS``: the echo stream with MS milliseconds between events;
- ``stall:SECONDS``: nothing at all (no status line) for that long, then the echo answer;
- ``mute``: the status line and headers of a stream, then nothing, until the client leaves.

A test can also force a scenario on one fake, whatever the header says: ``force`` (for the next
``force_count`` requests, or all when None), optionally only for requests made with ``force_key``;
``fail_rate`` fails that share of requests with a 500, drawn from a seeded generator.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tollway.protocol.sse import encode_event

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
USAGE = {"input_tokens": 31, "cache_creation_input_tokens": 12, "cache_read_input_tokens": 1024,
         "cache_creation": {"ephemeral_5m_input_tokens": 8, "ephemeral_1h_input_tokens": 4},
         "output_tokens": 7, "service_tier": "standard"}


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class FakeAnthropic:
    received: list[Received] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    """Scenarios whose handler was cancelled because the client (Tollway) hung up."""
    force: str | None = None
    force_count: int | None = None
    force_key: str | None = None
    retry_after: str = "7"
    should_retry: str | None = None
    fail_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    in_flight: int = 0
    peak: int = 0
    """The most ``/v1/messages`` requests handled at once since a test last set it to 0."""

    def reset(self) -> None:
        self.force = self.force_count = self.force_key = self.should_retry = None
        self.retry_after, self.fail_rate = "7", 0.0

    def _scenario(self, item: Received) -> str:
        if self.fail_rate and self.rng.random() < self.fail_rate:
            return "error:500:error_529_overloaded"
        if self.force is not None and (self.force_key is None or item.headers.get("x-api-key") == self.force_key):
            if self.force_count is None:
                return self.force
            if self.force_count > 0:
                self.force_count -= 1
                return self.force
        return item.headers.get("x-fake-scenario", "")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        return app

    async def _record(self, request: web.Request) -> Received:
        body = await request.read()
        item = Received(request.method, request.path, request.query_string,
                        {k.lower(): v for k, v in request.headers.items()}, body)
        self.received.append(item)
        return item

    def for_request_id(self, marker: str) -> Received:
        """The received request whose body contains ``marker``."""
        found = [r for r in self.received if marker.encode() in r.body]
        assert len(found) == 1, f"expected one upstream request with {marker!r}, found {len(found)}"
        return found[0]

    async def count_tokens(self, request: web.Request) -> web.Response:
        item = await self._record(request)
        return web.json_response({"input_tokens": len(item.body) // 4})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self._messages(request)
        finally:
            self.in_flight -= 1

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        item = await self._record(request)
        scenario = self._scenario(item)
        kind, _, arg = scenario.partition(":")
        try:
            if kind == "sse":
                return await self._replay(request, (FIXTURES / f"{arg}.sse").read_bytes())
            if kind == "json":
                return web.Response(body=(FIXTURES / f"{arg}.json").read_bytes(), content_type="application/json")
            if kind == "error":
                status, _, name = arg.partition(":")
                headers = {"retry-after": self.retry_after}
                if self.should_retry is not None:
                    headers["x-should-retry"] = self.should_retry
                return web.Response(status=int(status), body=(FIXTURES / f"{name}.json").read_bytes(),
                                    content_type="application/json", headers=headers)
            if kind == "html":
                return web.Response(status=int(arg), text="<html>Bad gateway</html>", content_type="text/html")
            body = item.json
            if kind == "stall":
                await asyncio.sleep(float(arg))
                return await self._echo(request, body)
            if kind == "die":
                return await self._die(request, body, int(arg))
            if kind == "hang":
                return await self._hang(request, body)
            if kind == "mute":
                response = await self._start_stream(request)
                await asyncio.sleep(60)
                return response
            if kind == "usage":  # a non-streamed echo that reports this many output tokens
                return web.json_response(self._answer(body) | {"usage": USAGE | {"output_tokens": int(arg)}})
            if kind == "slow":
                return await self._slow(request, body, int(arg) / 1000)
            return await self._echo(request, body)
        except asyncio.CancelledError:
            self.cancelled.append(scenario)
            raise

    @staticmethod
    def _answer(body: dict[str, Any]) -> dict[str, Any]:
        text = "echo: " + str(body["messages"][-1]["content"])[:100]
        return {"id": "msg_fake01", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": USAGE}

    def _events(self, body: dict[str, Any]) -> list[bytes]:
        answer = self._answer(body)
        text = answer["content"][0]["text"]
        start = answer | {"content": [], "stop_reason": None, "usage": USAGE | {"output_tokens": 1}}
        return [
            encode_event("message_start", {"type": "message_start", "message": start}),
            encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}}),
            encode_event("ping", {"type": "ping"}),
            *[encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": text[i:i + 10]}})
              for i in range(0, len(text), 10)],
            encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            encode_event("message_delta", {"type": "message_delta", "usage": USAGE,
                                           "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
            encode_event("message_stop", {"type": "message_stop"}),
        ]

    async def _echo(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not body.get("stream"):
            return web.json_response(self._answer(body))
        return await self._replay(request, b"".join(self._events(body)))

    @staticmethod
    async def _start_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        return response

    async def _replay(self, request: web.Request, data: bytes) -> web.StreamResponse:
        response = await self._start_stream(request)
        # Small uneven pieces, so event boundaries fall inside chunks as they do on real networks.
        for i in range(0, len(data), 97):
            await response.write(data[i:i + 97])
        await response.write_eof()
        return response

    async def _die(self, request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
        response = await self._start_stream(request)
        for event in self._events(body)[:n]:
            await response.write(event)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def _slow(self, request: web.Request, body: dict[str, Any], gap: float) -> web.StreamResponse:
        response = await self._start_stream(request)
        for event in self._events(body):
            await response.write(event)
            await asyncio.sleep(gap)
        await response.write_eof()
        return response

    async def _hang(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = await self._start_stream(request)
        await response.write(self._events(body)[0])
        await asyncio.sleep(60)
        return response
