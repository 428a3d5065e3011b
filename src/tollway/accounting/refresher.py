"""A store-backed cache's background reload: every ``interval`` seconds, failures logged, never raised.

The key cache and the funds both keep what they read from the store in memory and reload what changed on
this beat, so one refresh failing (the database restarting) leaves them serving what they already have.

While the store keeps failing, `Outage` keeps the log readable: the first failure is told at once (one line
when the database is out of reach, with the traceback when it is anything else), then one line a minute
while it lasts, and its end with how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from tollway.store.sql import StoreUnavailable


def describe(error: BaseException) -> str:
    """One line saying what went wrong, with no traceback."""
    if isinstance(error, StoreUnavailable):
        return f"the database is unreachable ({error.cause})"
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


class Outage:
    """The failures of one background task against the store, and what the log says of them."""

    REPORT_EVERY = 60.0

    def __init__(self, log: logging.Logger, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._monotonic = monotonic
        self.since: float | None = None
        """When the failures began (monotonic); None while the task works."""
        self.tries = 0
        """Failed tries since they began."""
        self.total = 0
        """Failed tries in the life of the process."""
        self.last_error: str | None = None
        self._next_report = 0.0

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failing_for(self) -> float:
        """Seconds since the failures began; 0 while the task works."""
        return 0.0 if self.since is None else self._monotonic() - self.since

    def failed(self, error: BaseException, what: str, *args: object) -> None:
        """Say that a try failed, when the log has not said so lately. ``what`` (with ``args``) says what failed
        and what is done meanwhile."""
        now = self._monotonic()
        self.tries += 1
        self.total += 1
        self.last_error = describe(error)
        if self.since is None:
            self.since = now
            self._next_report = now + self.REPORT_EVERY
            if isinstance(error, StoreUnavailable):
                self._log.warning(what + ": %s", *args, self.last_error)
            else:  # not an outage but a failure to look into: with its traceback
                self._log.error(what, *args, exc_info=error)
        elif now >= self._next_report:
            self._next_report = now + self.REPORT_EVERY
            self._log.warning(what + ", still, after %.0f s and %d tries: %s", *args, now - self.since, self.tries,
                              self.last_error)

    def ended(self, what: str, *args: object, level: int = logging.INFO) -> None:
        """Say that the task works again, if it had failed; ``what`` says what works again."""
        if self.since is None:
            return
        self._log.log(level, what + " again after %.1f s and %d failed tries", *args, self._monotonic() - self.since,
                      self.tries)
        self.since, self.tries = None, 0


class Refresher:
    def __init__(self, name: str, interval: float, refresh: Callable[[], Awaitable[None]], log: logging.Logger,
                 failure: str) -> None:
        self._name = name
        self._interval = interval
        self._refresh = refresh
        self._failure = failure
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self.outage = Outage(log)

    def poke(self) -> None:
        """Reload now rather than at the end of the interval (another process changed something). Pokes
        that come during a reload make one more, not one each."""
        self._poked.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self._interval)
            self._poked.clear()
            try:
                await self._refresh()
            except Exception as error:
                self.outage.failed(error, self._failure)
            else:
                self.outage.ended("%s: reloads work", self._name)
