"""Servers for end-to-end tests: each runs on its own event loop in a thread, on a loopback port.

Tests drive them with real clients over real sockets (the official SDK, aiohttp), the way users do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class AppServer:
    """An aiohttp app served on 127.0.0.1 with an ephemeral port."""

    def __init__(self, app: web.Application, name: str, *, handler_cancellation: bool = True,
                 shutdown_timeout: float = 5.0) -> None:
        self.thread = LoopThread(name)
        self.app = app
        self.runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None,
                                    shutdown_timeout=shutdown_timeout)
        self.port = self.thread.run(self._start())

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        return int(server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.thread.run(self.runner.cleanup())
        self.thread.stop()
