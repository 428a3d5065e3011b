"""The floor of a Python hop: a relay with no aiohttp in it, for the time-to-first-byte comparison.

An asyncio protocol parses requests with httptools and forwards each through Tollway's upstream client
(`tollway.providers.transport.Pool`); the answer goes back as it comes, chunked for a stream. Nothing else:
no header checks, no limits on sizes, no timeouts, one request at a time per connection. It is not a server
to run; it answers the bench's own requests, so that what aiohttp's server adds to a hop (the difference
between this and ``bare_relay.py --client tollway``) can be read apart from what Tollway does.

    python bench/raw_relay.py --port 18082 --upstream http://127.0.0.1:18080
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import httptools
import uvloop

from tollway.providers.transport import Pool, Response

# What the upstream needs, as bare_relay.py forwards it.
_FORWARD = frozenset({b"content-type", b"anthropic-version", b"anthropic-beta", b"x-api-key", b"authorization"})
_WAIT = 300.0


class RelayProtocol(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = ""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in _FORWARD:
            self._headers[lower.decode()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = (self._url, self._headers, b"".join(self._body))
        self._headers, self._body = {}, []
        asyncio.get_running_loop().create_task(self._forward(*request))

    async def _forward(self, url: str, headers: dict[str, str], body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        upstream = await self._pool.post(url, body, headers, first_byte=_WAIT)
        ctype = upstream.header("content-type") or "application/json"
        if ctype.startswith("text/event-stream"):
            await _relay_stream(transport, upstream, ctype)
        else:
            data = await upstream.read(idle=_WAIT)
            transport.write(f"HTTP/1.1 {upstream.status} OK\r\ncontent-type: {ctype}\r\n"
                            f"content-length: {len(data)}\r\n\r\n".encode() + data)


async def _relay_stream(transport: asyncio.Transport, upstream: Response, ctype: str) -> None:
    # The status line goes with the first bytes, in one write: the least a hop can do.
    first = await upstream.read_chunk(idle=_WAIT)
    head = f"HTTP/1.1 {upstream.status} OK\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n\r\n"
    transport.write(head.encode() + (b"%x\r\n%s\r\n" % (len(first), first) if first else b""))
    while chunk := await upstream.read_chunk(idle=_WAIT):
        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    upstream.release()
    transport.write(b"0\r\n\r\n")


async def serve(port: int, upstream: str) -> None:
    pool = Pool(upstream, connect_timeout=10)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RelayProtocol(pool), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:18080")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
