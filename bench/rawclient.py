"""A blocking HTTP/1.1 client, one keep-alive socket per address, for timing first bytes at concurrency 1.

The TTFB rounds send one request at a time, so an event loop on the client's side buys nothing, and whatever
a client does between its send and the first byte it surfaces (tasks, futures, a ClientSession's bookkeeping)
is noise in the time measured, and lands on one hop or another. Here the clock is read right before
``sendall`` and in the parser's first body callback, inside the ``recv`` that brought that byte; httptools
(llhttp, in C) frames the answer.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httptools


class _Answer:
    """httptools' callbacks: the body's pieces, and when the first of them came."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.done = False
        self.first_ns = 0

    def on_body(self, data: bytes) -> None:
        if not self.body:
            self.first_ns = time.perf_counter_ns()
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


class RawClient:
    def __init__(self, timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._socks: dict[tuple[str, int], socket.socket] = {}

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    def _sock(self, address: tuple[str, int]) -> socket.socket:
        sock = self._socks.get(address)
        if sock is None:
            sock = socket.create_connection(address, timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks[address] = sock
        return sock

    def _drop(self, address: tuple[str, int]) -> None:
        sock = self._socks.pop(address, None)
        if sock is not None:
            sock.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, int, int]:
        """(status, the whole body, perf_counter_ns before the send, perf_counter_ns at the first body byte)."""
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 80)
        fields = {name.lower(): value for name, value in headers.items()}
        fields.setdefault("content-type", "application/json")
        fields["host"] = f"{address[0]}:{address[1]}"
        fields["content-length"] = str(len(body))
        head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        request = f"POST {parts.path or '/'} HTTP/1.1\r\n{head}\r\n".encode() + body
        for attempt in (1, 2):
            sock = self._sock(address)
            answer = _Answer()
            parser = httptools.HttpResponseParser(answer)
            t0 = time.perf_counter_ns()
            try:
                sock.sendall(request)
                while not answer.done:
                    data = sock.recv(262144)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    parser.feed_data(data)
            except (OSError, httptools.HttpParserError):
                self._drop(address)
                # A kept-alive connection the server closed between two requests (uvicorn does after 5 s
                # idle): once more on a new one, as HTTP clients do, if nothing of an answer came.
                if attempt == 2 or answer.body or parser.get_status_code():
                    raise
                continue
            if not parser.should_keep_alive():
                self._drop(address)
            return parser.get_status_code(), b"".join(answer.body), t0, answer.first_ns
        raise AssertionError("unreachable")
