"""Shared limits while the shared store answers, this replica's own while it does not.

When Redis cannot be reached, refusing every request would turn a Redis outage into a gateway outage, and
letting every request through would drop the limits altogether. So the limits go on in this process (each
replica counting on its own, as before there was Redis) and the switch is logged; Redis is tried again
``retry_delay`` seconds later, by one call while the others stay local, and the limits are shared again once
it answers.

What the switch costs: the local buckets start full, so for a moment a key can get up to its limit on each
replica; a refund that comes after a switch lands in the other backend (a local one ignores a bucket it
never saw; a shared one is capped by the take's ``until``); slots are released where they were taken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollway.limits.base import Decision, Limiter, Take
from tollway.limits.memory import MemoryLimiter

log = logging.getLogger("tollway.limits")

T = TypeVar("T")

# Unreachable, as opposed to wrong: a script error is a bug to see, not a reason to stop sharing limits.
UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


class FallbackLimiter:
    def __init__(self, shared: Limiter, local: Limiter | None = None, *, retry_delay: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 unreachable: tuple[type[BaseException], ...] = UNREACHABLE) -> None:
        self.shared = shared
        self.local: Limiter = local if local is not None else MemoryLimiter()
        self.retry_delay = retry_delay
        self._monotonic = monotonic
        self._unreachable = unreachable
        self._retry_at: float | None = None
        """None while the shared limiter is in use; else when to try it again."""
        self.outages = 0
        """How many times the shared limiter was lost, for /healthz and metrics."""
        # Which backend each slot held under a name came from (True: shared), so it goes back there.
        self._slots: dict[str, list[bool]] = {}

    @property
    def is_shared(self) -> bool:
        """Whether the limits are the ones every replica shares, rather than this process's own."""
        return self._retry_at is None

    async def close(self) -> None:
        for limiter in (self.shared, self.local):
            close: Callable[[], Awaitable[None]] | None = getattr(limiter, "close", None)
            if close is not None:
                await close()

    def _try_shared(self) -> bool:
        if self._retry_at is None:
            return True
        now = self._monotonic()
        if now < self._retry_at:
            return False
        # One call tries; the others keep to the local limits until it has answered.
        self._retry_at = now + self.retry_delay
        return True

    def _lost(self, error: BaseException) -> None:
        if self._retry_at is None:
            self.outages += 1
            log.warning("rate limits: the shared store is unreachable (%s: %s); limits are per replica until "
                        "it is back (next try in %gs)", type(error).__name__, error, self.retry_delay)
        self._retry_at = self._monotonic() + self.retry_delay

    def _found(self) -> None:
        if self._retry_at is not None:
            self._retry_at = None
            log.warning("rate limits: the shared store is back; limits are shared across replicas again")

    async def _call(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """What the shared limiter answers, or the local one when the shared is out; and which it was."""
        if self._try_shared():
            try:
                result = await shared()
            except self._unreachable as error:
                self._lost(error)
            else:
                self._found()
                return result, True
        return await local(), False

    async def take(self, takes: Sequence[Take]) -> list[Decision]:
        return (await self._call(lambda: self.shared.take(takes), lambda: self.local.take(takes)))[0]

    async def refund(self, takes: Sequence[Take]) -> None:
        await self._call(lambda: self.shared.refund(takes), lambda: self.local.refund(takes))

    async def acquire(self, name: str, limit: int) -> bool:
        got, shared = await self._call(lambda: self.shared.acquire(name, limit),
                                       lambda: self.local.acquire(name, limit))
        if got:
            self._slots.setdefault(name, []).append(shared)
        return got

    async def admit(self, takes: Sequence[Take], slots: Sequence[tuple[str, int]]) -> tuple[list[Decision], int | None]:
        (decisions, full), shared = await self._call(lambda: self.shared.admit(takes, slots),
                                                     lambda: self.local.admit(takes, slots))
        if full is None and all(d.allowed for d in decisions):
            for name, _ in slots:
                self._slots.setdefault(name, []).append(shared)
        return decisions, full

    async def finish(self, refunds: Sequence[Take], slots: Sequence[str]) -> None:
        # Each slot goes back where it was taken; refunds go where limits are now.
        shared_slots: list[str] = []
        local_slots: list[str] = []
        for name in slots:
            held = self._slots.get(name)
            if held:
                (shared_slots if held.pop() else local_slots).append(name)
        if local_slots:
            await self.local.finish([], local_slots)
        # Shared slots that cannot be released (Redis away) end with their leases.
        await self._call(lambda: self.shared.finish(refunds, shared_slots), lambda: self.local.finish(refunds, []))

    async def release(self, name: str) -> None:
        held = self._slots.get(name)
        if not held:
            return
        shared = held.pop()
        if not shared:
            await self.local.release(name)
            return
        try:
            await self.shared.release(name)
        except self._unreachable as error:
            # Its lease runs out on its own; and it was never taken locally, so nothing is given back here.
            self._lost(error)
