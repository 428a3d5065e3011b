"""A forward proxy on loopback for the tests: it answers CONNECT by opening the tunnel and piping bytes both ways,
notes what each CONNECT asked and carried, and can be told to refuse."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.pipe import pipe


@dataclass
class ConnectProxy:
    refuse: bytes | None = None
    """An answer to send instead of opening any tunnel (a 407, say)."""
    port: int = 0
    connects: list[tuple[str, str | None]] = field(default_factory=list)
    """Each CONNECT: its target and its Proxy-Authorization header."""
    _server: asyncio.Server | None = None

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, *lines = head.split("\r\n")
        auth = next((line.split(":", 1)[1].strip() for line in lines
                     if line.lower().startswith("proxy-authorization:")), None)
        method, target, _ = request_line.split(" ")
        self.connects.append((target, auth))
        if self.refuse is not None or method != "CONNECT":
            writer.write(self.refuse or b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.contextmanager
def proxy_in_thread(refuse: bytes | None = None) -> Iterator[ConnectProxy]:
    """A `ConnectProxy` on a loop of its own, for a gateway that runs on another thread's loop."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    proxy = ConnectProxy(refuse=refuse)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(proxy.stop())
        loop.close()

    thread = threading.Thread(target=run, name="connect-proxy", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
