"""Tollway's own HTTP/1.1 server for ``POST /v1/messages`` and its count_tokens; aiohttp serves the rest, on the
same port.

Why: aiohttp's server is most of what a Python hop adds to a request's first byte. Measured in one bench run
(`bench/run.py`, time to first byte at c=1, added over direct): a relay on aiohttp's server and Tollway's
upstream client 0.44 ms at p50 and 0.95 ms at p99, the same relay on a bare httptools protocol 0.22 and 0.58.

How: every connection starts here. A request's head is read up to its blank line and parsed by httptools (the
parser uvicorn uses); one of the two endpoints, over HTTP/1.1, with a ``Content-Length`` body within the size
limit and no ``Expect``, ``Upgrade`` or ``Transfer-Encoding``, is served here. Anything else (another path, a
chunked body, a malformed head...) hands the connection to aiohttp at that request's first byte, with every
byte received since, and aiohttp serves it from then on as if it had accepted it: its answers, errors and limits
are what they always were. Bodies are framed by their length, so where a request ends is known to the byte, and
a request pipelined after it is bytes untouched, to serve or to hand over.

A connection serves one request at a time, in order; it closes after ``KEEPALIVE`` seconds idle, as aiohttp's
do. A client that leaves cancels its request's handler, as aiohttp's ``handler_cancellation`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tollway.api.errors import error_parts, failure

KEEPALIVE = 75.0
"""Seconds an idle connection is kept (aiohttp's default)."""
MAX_HEAD = 8190
"""A head longer than this goes to aiohttp, whose own limits (8,190 bytes a line) then apply as they always did;
the SDKs' and Claude Code's heads are 1-2 KB."""
_HIGH_WATER = 256 * 1024
"""Bytes of requests that wait behind the one being served before reading pauses."""
ENDPOINTS = {b"/v1/messages": "messages", b"/v1/messages/count_tokens": "count_tokens"}

Handler = Callable[["FrontExchange", str], Awaitable[None]]
"""Serves one request to an endpoint (`tollway.api.messages.serve`, with the services bound)."""


class Front:
    """What every connection of one listening socket shares."""

    def __init__(self, handler: Handler, fallback: Callable[[], asyncio.Protocol], request_ids: Callable[[], str],
                 max_body: int) -> None:
        self.handler = handler
        self.fallback = fallback
        """Makes aiohttp's protocol for a connection handed over (aiohttp's `web.Server`)."""
        self.request_ids = request_ids
        self.max_body = max_body
        self.connections: set[FrontConnection] = set()
        self._date = ""
        self._date_second = -1

    def protocol(self) -> FrontConnection:
        return FrontConnection(self)

    def date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date, self._date_second = formatdate(now, usegmt=True), now
        return self._date

    async def shutdown(self, grace: float) -> None:
        """Close the idle connections; give the busy ones ``grace`` seconds to finish, then cancel them."""
        for conn in list(self.connections):
            conn.stop_reading()
        busy = [conn.task for conn in self.connections if conn.task is not None]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self.connections):
            conn.close()


class _Head:
    """A request head as httptools reads it: the callbacks land here."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # As aiohttp decodes them, and as the upstream client encodes them again: bytes survive the trip.
        self.headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.complete = True


class _Request:
    __slots__ = ("endpoint", "headers", "keep_alive", "length", "query")

    def __init__(self, endpoint: str, query: str, headers: CIMultiDictProxy[str], length: int,
                 keep_alive: bool) -> None:
        self.endpoint, self.query, self.headers = endpoint, query, headers
        self.length, self.keep_alive = length, keep_alive


class FrontConnection(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._request: _Request | None = None
        """A head read, its body still coming."""
        self.task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._stopping = False
        self.remote: str | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self._front.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.task is None:
            self._advance()
        elif len(self._buffer) > _HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.connections.discard(self)
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None:
            self.task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()

    # requests

    def _advance(self) -> None:
        """Read what the buffer holds: start serving the next whole request, or hand the connection over."""
        if self._transport is None:
            return
        buffer = self._buffer
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._request is None:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
            if end < 0:
                if len(buffer) >= MAX_HEAD:
                    self._hand_over()
                elif not buffer:
                    self._arm_idle()
                return
            request = self._read_head(bytes(buffer[:end + 4]))
            if request is None:
                self._hand_over()
                return
            del buffer[:end + 4]
            self._request = request
        request = self._request
        if len(buffer) < request.length:
            return
        body = bytes(buffer[:request.length])
        del buffer[:request.length]
        self._request = None
        self.task = asyncio.get_running_loop().create_task(self._serve(request, body))

    def _read_head(self, head: bytes) -> _Request | None:
        """The request, if it is one for the front; None to hand the connection over."""
        seen = _Head()
        parser = httptools.HttpRequestParser(seen)
        try:
            parser.feed_data(head)
        except httptools.HttpParserError:
            return None  # aiohttp answers it as it answers any malformed request
        if not seen.complete or parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
            return None
        path, _, query = seen.url.partition(b"?")
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return None
        headers = CIMultiDict(seen.headers)
        lengths = headers.getall("content-length", ())
        if (len(lengths) != 1 or not lengths[0].isdigit() or "transfer-encoding" in headers or "expect" in headers
                or "upgrade" in headers):
            return None
        length = int(lengths[0])
        if length > self._front.max_body:
            return None  # aiohttp's 413, with the body left unread, as for any request
        return _Request(endpoint, query.decode("utf-8", "surrogateescape"), CIMultiDictProxy(headers), length,
                        parser.should_keep_alive())

    async def _serve(self, request: _Request, body: bytes) -> None:
        exchange = FrontExchange(self, request, body, self._front.request_ids())
        try:
            await self._front.handler(exchange, request.endpoint)
        except Exception as exc:  # rendered as the error middleware renders aiohttp's
            error = failure(exc, exchange.request_id, f"POST /v1/{request.endpoint}")
            if exchange.started:
                self.close()  # part of a stream is out: a second answer would corrupt it
            else:
                exchange.answer(*error_parts(error, exchange.request_id))
        finally:
            self.task = None
        exchange.deliver()
        if not request.keep_alive or self._stopping:
            self.close()
            return
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        self._advance()

    def _hand_over(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._front.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        protocol = self._front.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            protocol.data_received(data)
        if self._reading_paused:
            transport.resume_reading()

    # the connection

    def _arm_idle(self) -> None:
        if self._transport is not None and self.task is None:
            self._idle = asyncio.get_running_loop().call_later(KEEPALIVE, self.close)

    def stop_reading(self) -> None:
        """For a shutdown: close now if idle, else after the answer under way."""
        self._stopping = True
        if self.task is None:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def date(self) -> str:
        return self._front.date()

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the client has gone")
        self._transport.write(data)

    async def drain(self) -> None:
        if not self._writing_paused:
            return
        if self._transport is None:
            raise ConnectionResetError("the client has gone")
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            if self._transport is None:
                waiter.set_exception(ConnectionResetError("the client has gone"))
            else:
                waiter.set_result(None)


class FrontExchange:
    """An `tollway.api.exchange.Exchange` on a front connection."""

    __slots__ = ("_answer", "_body", "_conn", "_keep_alive", "headers", "query", "remote", "request_id", "started")

    def __init__(self, conn: FrontConnection, request: _Request, body: bytes, request_id: str) -> None:
        self._conn = conn
        self._body = body
        self._keep_alive = request.keep_alive
        self.request_id = request_id
        self.headers = request.headers
        self.remote = conn.remote
        self.query = request.query
        self.started = False
        self._answer = b""

    async def read(self, limit: int) -> bytes:
        return self._body  # within the limit: a larger one went to aiohttp

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        # Sent once the handler has returned, as aiohttp sends a returned response: by the time a client has
        # its answer, the request's usage and money are settled (its next request may count on it).
        self._answer = self._head(status, headers, f"content-length: {len(body)}\r\n") + body

    def deliver(self) -> None:
        answer, self._answer = self._answer, b""
        if answer:
            # A client gone by now is no error of the request's (aiohttp drops such an answer too).
            with contextlib.suppress(ConnectionResetError):
                self._conn.write(answer)

    async def open_stream(self, headers: dict[str, str]) -> None:
        self.started = True
        self._conn.write(self._head(200, headers, "transfer-encoding: chunked\r\n"))

    async def send(self, chunk: bytes) -> None:
        if chunk:
            conn = self._conn
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await conn.drain()

    async def end_stream(self) -> None:
        self._conn.write(b"0\r\n\r\n")

    def _head(self, status: int, headers: dict[str, str], framing: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()),
                 framing, f"date: {self._conn.date()}\r\n"]
        if not self._keep_alive:
            lines.append("connection: close\r\n")
        text = "".join(lines)
        # Each line's only line break is its own: a value carrying one would smuggle a header in.
        if text.count("\n") != len(lines):
            raise ValueError("an answer header carries a line break")
        return text.encode("utf-8", "surrogateescape") + b"\r\n"


_REASONS: dict[int, str] = {}


def _reason(status: int) -> str:
    reason = _REASONS.get(status)
    if reason is None:
        with contextlib.suppress(ValueError):
            reason = http.HTTPStatus(status).phrase
        reason = _REASONS[status] = reason or "Unknown"
    return reason


class FrontSite(web.TCPSite):
    """A listening socket whose connections start on the front, for the runner's application."""

    def __init__(self, runner: web.AppRunner, handler: Handler, request_ids: Callable[[], str], max_body: int,
                 host: str | None = None, port: int | None = None, *, backlog: int = 128,
                 reuse_port: bool | None = None, shutdown_timeout: float = 60.0) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        server = runner.server
        assert server is not None, "runner.setup() first"
        self.front = Front(handler, server, request_ids, max_body)
        self._grace = shutdown_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        self._server = server = await loop.create_server(self.front.protocol, self._host, self._port,
                                                         backlog=self._backlog, reuse_port=self._reuse_port)
        self._bound_port = server.sockets[0].getsockname()[1] if server.sockets else self._port

    async def stop(self) -> None:
        # No new connections, then the front's own drain; aiohttp's connections drain after, in the runner.
        if self._server is not None:
            self._server.close()
        await self.front.shutdown(self._grace)
        await super().stop()
