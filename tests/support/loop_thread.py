"""Servers for end-to-end tests: each runs on its own event loop in a thread, on a loopback port.

Tests drive them with real clients over real sockets (the official SDK, aiohttp), the way users do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str, loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
                 ) -> None:
        self.loop = loop_factory()
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
                 shutdown_timeout: float = 5.0, site: Callable[[web.AppRunner], web.TCPSite] | None = None,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        """``site``: makes the listening site on 127.0.0.1, port 0, after the runner is set up (default a
        plain aiohttp one)."""
        self.thread = LoopThread(name, loop_factory)
        self.app = app
        self.runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None,
                                    shutdown_timeout=shutdown_timeout)
        self.port = self.thread.run(self._start(site))

    async def _start(self, make: Callable[[web.AppRunner], web.TCPSite] | None) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0) if make is None else make(self.runner)
        await site.start()
        return site.port  # the port bound

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.thread.run(self.runner.cleanup())
        self.thread.stop()
