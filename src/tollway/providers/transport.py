"""The HTTP/1.1 client every upstream call goes through: a keep-alive pool per upstream, parsed by httptools.

Why not aiohttp's client, which Tollway used before: callgrind counts about 300,000 instructions a request for
a ``ClientSession.post`` and its reads, half of everything a bare aiohttp relay does per request (see the
README's benchmark section). An upstream call needs little of what that pays for (cookies, redirects, tracing,
auth, per-request options): one method, bodies already in bytes, a few known hosts. Parsing, the part
worth a library, is llhttp's, through httptools (the parser uvicorn uses).

What it does: connections kept per upstream and reused newest first, closed after ``keepalive`` seconds idle;
TLS with the system's CA store; ``Content-Length``, chunked and read-to-close bodies; reading paused while more
than ``_HIGH_WATER`` bytes wait for a slow reader; a deadline for the status line and one for each silence in
the body. A request on a reused connection that the server closed before answering a byte is sent once more on
a new one: the server closing an idle connection just as a request leaves is the usual cause (uvicorn, behind
vLLM and most OpenAI-compatible servers, closes idle ones after 5 s), and the SDKs would resend it anyway. With
a proxy, each connection is a CONNECT tunnel through it (`tollway.providers.proxy`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

from tollway.config.proxy import Proxy
from tollway.providers.proxy import ProxyError, open_tunnel

# A slow reader pauses the upstream socket past this much unread body; reading resumes once it has taken it.
_HIGH_WATER = 256 * 1024


class TransportError(Exception):
    """The upstream could not be reached, or broke the exchange; the message says how."""


class TransportTimeout(TransportError):
    """A deadline passed: connecting, waiting for the status line, or a silence in the body."""


class _Connection(asyncio.Protocol):
    """One socket to the upstream, one exchange at a time; the parser's callbacks land here."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self.chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.status = 0
        self.head = b""
        """The answer's header lines as sent (LF-separated, the status line first), once ``head_done``."""
        self._head_bytes = b""
        self.head_done = False
        self.complete = False
        self.reusable = False
        self.answered = False
        """Some byte of the answer arrived (a connection lost before that may be retried)."""
        self.error: TransportError | None = None
        self.in_use = False
        self.idle_since = 0.0

    def reset(self) -> None:
        self.status, self.head = 0, b""
        self.head_done = self.complete = self.reusable = self.answered = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, so no isinstance here).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A request is one write and its answer is awaited: Nagle would only hold the packet back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            self.close()  # nothing was asked: bytes on an idle connection leave it in an unknown state
            return
        self.answered = True
        if not self.head_done:
            self._head_bytes = self._head_bytes + data if self._head_bytes else data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"malformed HTTP from upstream ({exc})"))
        if self.head_done and self._head_bytes:
            self.head, self._head_bytes = _final_head(self._head_bytes), b""
        self._wake()

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.head_done and not self.complete and exc is None and self._ends_at_close():
            self.complete = True  # a body with no length is delimited by the close
        elif not self.complete and self.error is None:
            self.error = TransportError("the upstream closed the connection" + (f" ({exc})" if exc else ""))
        self.reusable = False
        self._wake()

    # httptools callbacks. No on_header: a Python call per header line (twenty-odd from Anthropic) cost more
    # than the rest of the parse; the header lines are kept as bytes and looked up by name (see `Response`).

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200:  # not 1xx (103 Early Hints and the like): the answer proper follows those
            self.status, self.head_done = status, True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.reusable = self._parser.should_keep_alive()

    # the exchange

    def _ends_at_close(self) -> bool:
        head = self.head.lower()
        coding = header_value(head, head, "transfer-encoding") or b""
        return b"\ncontent-length:" not in head and b"chunked" not in coding

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def wait(self, deadline: float) -> None:
        """Until the parser has news (bytes, the end, an error) or ``deadline`` (loop time) passes."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_at(deadline, _expire, waiter)
        try:
            arrived = await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not arrived:
            raise TransportTimeout("deadline passed")

    def take(self) -> bytes:
        """Every body byte parsed so far (b"" if none)."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


def _final_head(data: bytes) -> bytes:
    """The header lines of the final answer in ``data`` (the bytes that completed it, 1xx answers first if any),
    LF-separated, without the blank line."""
    while True:
        end, blank = data.find(b"\r\n\r\n"), 4
        if end < 0:  # bare LF line ends, which llhttp also accepts
            end, blank = data.find(b"\n\n"), 2
        head = data[:end].replace(b"\r\n", b"\n")
        if head[9:10] != b"1":  # the status code's first digit ("HTTP/1.1 103 ..."): 1xx answers come first
            return head
        data = data[end + blank:]


def header_value(head: bytes, lowered: bytes, name: str) -> bytes | None:
    """A header's value in ``head`` (LF-separated lines; ``lowered`` is the same, lower case), found without
    splitting the head into lines: the values of a repeated header joined by ", "."""
    key = b"\n" + name.encode("latin-1") + b":"
    at = lowered.find(key)
    if at < 0:
        return None
    values = []
    while at >= 0:
        start = at + len(key)
        end = lowered.find(b"\n", start)
        values.append(head[start:end if end >= 0 else len(head)].strip())
        at = lowered.find(key, start)
    return values[0] if len(values) == 1 else b", ".join(values)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Response:
    """An answer whose status line and headers are in; the body is read through `read`/`read_chunk`."""

    __slots__ = ("_conn", "_head", "_lowered", "_pool", "status")

    def __init__(self, pool: Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = conn.status
        self._head = conn.head
        self._lowered = b""

    def header(self, name: str) -> str | None:
        """One header's value (``name`` in lower case), a repeated header's values joined by ", "."""
        if not self._lowered:
            self._lowered = self._head.lower()
        value = header_value(self._head, self._lowered, name)
        return None if value is None else value.decode("latin-1")

    @property
    def headers(self) -> dict[str, str]:
        """Every header, names in lower case, a repeated header's values joined by ", "."""
        out: dict[str, str] = {}
        for line in self._head.split(b"\n")[1:]:
            name, _, value = line.partition(b":")
            key, text = name.strip().decode("latin-1").lower(), value.strip().decode("latin-1")
            out[key] = f"{out[key]}, {text}" if key in out else text
        return out

    @property
    def at_eof(self) -> bool:
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    async def read_chunk(self, idle: float) -> bytes:
        """The body bytes that have arrived, waiting for some; b"" at the end. Safe to cancel: nothing is lost.
        Raises `TransportTimeout` after ``idle`` seconds with nothing new."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait(conn._loop.time() + idle)

    async def read(self, idle: float) -> bytes:
        """The whole body; the connection then goes back to the pool."""
        parts: list[bytes] = []
        try:
            while chunk := await self.read_chunk(idle):
                parts.append(chunk)
        finally:
            self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with the answer: the connection is pooled if the body was read to its end, closed if not."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put_back(conn)

    def close(self) -> None:
        """Done with the answer before its end: the connection is closed, which tells the upstream to stop."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            conn.in_use = False


class Pool:
    """Keep-alive connections to one upstream (scheme, host and port of ``base_url``); paths are appended to
    ``base_url``'s own path."""

    def __init__(self, base_url: str, *, connect_timeout: float, keepalive: float = 15.0,
                 proxy: Proxy | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        default = 443 if url.scheme == "https" else 80
        self._port = url.port or default
        self._prefix = url.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if self._port == default else f"{host}:{self._port}"
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._proxy = proxy
        self._idle: list[_Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(self, path: str, body: bytes, headers: dict[str, str], first_byte: float) -> Response:
        """Send; return once the status line and headers are in, at most ``first_byte`` seconds from now
        (connecting included). ``headers`` must not carry Host or Content-Length."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + first_byte
        lines = [f"POST {self._prefix}{path} HTTP/1.1\r\n", f"host: {self._host_header}\r\n",
                 *(f"{name}: {value}\r\n" for name, value in headers.items()),
                 f"content-length: {len(body)}\r\n", "\r\n"]
        head = "".join(lines)
        # Each line's only line break is its own: a value carrying one would smuggle a header in.
        if head.count("\n") != len(lines):
            raise ValueError("a request header carries a line break")
        message = head.encode("utf-8", "surrogateescape") + body
        conn = self._reuse(loop)
        if conn is not None:
            try:
                return await self._exchange(conn, message, deadline)
            except TransportError:
                if conn.answered or conn.error is None or loop.time() >= deadline:
                    raise
                # closed under us before a byte came back: once more, on a new connection
        conn = await self._connect(loop, deadline)
        return await self._exchange(conn, message, deadline)

    async def _exchange(self, conn: _Connection, message: bytes, deadline: float) -> Response:
        conn.in_use = True
        try:
            if conn.transport is None:
                raise conn.error or TransportError("the upstream closed the connection")
            conn.transport.write(message)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(deadline)
        except BaseException:
            conn.close()
            raise
        return Response(self, conn)

    def _reuse(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                continue
            if loop.time() - conn.idle_since > self._keepalive:
                conn.close()  # the rest of the list is older still
                self._close_idle()
                return None
            conn.reset()
            return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        if self._closed:
            raise TransportError("the pool is closed")
        timeout = min(self._connect_timeout, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                if self._proxy is not None:
                    return await open_tunnel(loop, self._proxy, self._host, self._port, lambda: _Connection(loop),
                                             self._ssl)
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError:
            raise TransportTimeout(f"no connection within {timeout:g} s") from None
        except ProxyError as exc:
            raise TransportError(str(exc)) from None
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, DNS, certificate
            raise TransportError(f"cannot connect ({type(exc).__name__}: {exc})") from None
        return conn

    def put_back(self, conn: _Connection) -> None:
        conn.in_use = False
        if self._closed or not conn.reusable or conn.chunks or conn.transport is None:
            conn.close()
            return
        loop = conn._loop
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self._keepalive, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close what has sat idle past keepalive, so idle sockets do not outlive the upstream's patience."""
        self._sweep = None
        if not self._idle:
            return
        now = self._idle[0]._loop.time()
        fresh = []
        for conn in self._idle:
            if now - conn.idle_since > self._keepalive:
                conn.close()
            else:
                fresh.append(conn)
        self._idle = fresh
        if fresh:
            self._sweep = fresh[0]._loop.call_later(self._keepalive, self._sweep_idle)

    def _close_idle(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def close(self) -> None:
        """Close the idle connections; those in use close as they are released."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._close_idle()
