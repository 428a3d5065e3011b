"""Servers on loopback for the pool's tests, answering with bytes written out by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tollway.providers.transport import Pool

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
"""Serves one connection: the reader, the writer, and the connection's number (0 for the first)."""


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"


Serve = Callable[..., Awaitable[Server]]
"""Starts a `Server` answering with a `Reply` (the ``serve`` fixture)."""


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body); None if the client closed first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), b"".join(e + b"\r\n" for e in extra),
                                                                   body)


OpenPool = Callable[..., Pool]
"""Makes a pool (the arguments of `Pool`) that is closed when the test ends."""


def keep_alive(*answers: bytes, requests: list[bytes] | None = None) -> Reply:
    """Answers each request on a connection with the next of ``answers`` (the last one repeated)."""
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        n = 0
        while (request := await read_request(reader)) is not None:
            if requests is not None:
                requests.append(request)
            writer.write(answers[min(n, len(answers) - 1)])
            await writer.drain()
            n += 1
    return reply


def answer_once(data: bytes) -> Reply:
    """Answers the first request on each connection with ``data``, then closes the connection."""
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()
    return reply
