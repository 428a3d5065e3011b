"""The CONNECT tunnel through an HTTP forward proxy (which proxy: `tollway.config.proxy`).

Every connection through a proxy is a tunnel, for http and https upstreams alike; for https the TLS handshake
runs inside it, end to end with the upstream, so the proxy sees the host name and port and nothing else.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from tollway.config.proxy import Proxy

_MAX_ANSWER = 16 * 1024
"""Bytes a proxy may send in answer to CONNECT before its blank line; past that it is not speaking HTTP."""
P = TypeVar("P", bound=asyncio.Protocol)


class ProxyError(Exception):
    """The proxy could not be reached, or would not open the tunnel; the message says which and why."""


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int,
                      protocol: Callable[[], P], tls: ssl.SSLContext | None) -> P:
    """A connection to ``host:port`` through ``proxy``, handed to a new ``protocol()``: CONNECT, then with
    ``tls`` the TLS handshake with the upstream inside the tunnel. The caller bounds the time it may take."""
    try:
        transport, handshake = await loop.create_connection(lambda: _Handshake(loop), proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(f"cannot connect to the proxy {proxy.where} ({type(exc).__name__}: {exc})") from None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1\r\n", f"host: {target}\r\n"]
    if proxy.authorization is not None:
        lines.append(f"proxy-authorization: {proxy.authorization}\r\n")
    transport.write("".join([*lines, "\r\n"]).encode("ascii", "surrogateescape"))
    try:
        rest = await handshake.answer
        status, _, reason = handshake.status_line.partition(" ")[2].partition(" ")
        if status != "200":
            raise ProxyError(f"the proxy {proxy.where} refused the tunnel to {target}: {status} {reason}".rstrip())
        conn = protocol()
        if tls is None:
            transport.set_protocol(conn)
            conn.connection_made(transport)
            if rest or handshake.late:
                conn.data_received(rest + handshake.late)
        else:
            # The upstream speaks first only once the client has said hello: nothing can have come before it.
            secure = await loop.start_tls(transport, conn, tls, server_hostname=host)
            if secure is None:
                raise ProxyError(f"the tunnel to {target} through {proxy.where} closed during the TLS handshake")
            conn.connection_made(secure)
    except BaseException:
        transport.close()
        raise
    return conn


class _Handshake(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, up to its blank line."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self.status_line = ""
        self._buffer = b""
        self.late = b""
        """What came after the answer, before the connection was handed over."""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            self.late += data
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_ANSWER:
                self.answer.set_exception(ProxyError("the proxy's answer to CONNECT is not HTTP"))
            return
        self.status_line = self._buffer.split(b"\r\n", 1)[0].decode("latin-1")
        if not self.status_line.startswith("HTTP/1."):
            self.answer.set_exception(ProxyError("the proxy's answer to CONNECT is not HTTP"))
            return
        self.answer.set_result(self._buffer[end + 4:])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ProxyError("the proxy closed the connection before answering CONNECT"))
