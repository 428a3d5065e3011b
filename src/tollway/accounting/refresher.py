"""A store-backed cache's background reload: every ``interval`` seconds, failures logged, never raised.

The key cache and the funds both keep what they read from the store in memory and reload what changed on
this beat, so one refresh failing (the database restarting) leaves them serving what they already have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Refresher:
    def __init__(self, name: str, interval: float, refresh: Callable[[], Awaitable[None]], log: logging.Logger,
                 failure: str) -> None:
        self._name = name
        self._interval = interval
        self._refresh = refresh
        self._log = log
        self._failure = failure
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._refresh()
            except Exception:
                self._log.exception(self._failure)
