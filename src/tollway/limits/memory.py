"""Limits kept in this process: exact under any concurrency, since no counter is read and written across
an ``await``; they do not add up across processes or replicas."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tollway.limits.base import Decision, Take, gcra


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._running: dict[str, int] = {}

    async def take(self, takes: Sequence[Take]) -> list[Decision]:
        now = self._clock()
        tats = self._tat
        results = [gcra(tats.get(t.name, now), now, t.cost, t.quota) for t in takes]
        allowed = sum(d.allowed for _, d in results)
        if allowed == len(results):
            for take, (tat, _) in zip(takes, results, strict=True):
                tats[take.name] = tat
        elif allowed:
            # All or nothing: the limits that would have allowed it report what they still hold.
            results = [(tat, d if not d.allowed else _unspent(d, take)) for take, (tat, d) in zip(
                takes, results, strict=True)]
        return [d for _, d in results]

    async def refund(self, takes: Sequence[Take]) -> None:
        now = self._clock()
        for t in takes:
            tat = self._tat.get(t.name)
            if tat is None or t.cost <= 0:
                continue
            seconds = t.cost * t.quota.interval
            if t.until is not None:
                seconds = min(seconds, max(0.0, t.until - now))
            self._tat[t.name] = max(now, tat - seconds)

    async def acquire(self, name: str, limit: int) -> bool:
        running = self._running.get(name, 0)
        if running >= limit:
            return False
        self._running[name] = running + 1
        return True

    async def release(self, name: str) -> None:
        self._running[name] = max(0, self._running.get(name, 0) - 1)

    async def admit(self, takes: Sequence[Take], slots: Sequence[tuple[str, int]]) -> tuple[list[Decision], int | None]:
        decisions = await self.take(takes) if takes else []
        if not all(d.allowed for d in decisions):
            return decisions, None
        running = self._running
        for i, (name, limit) in enumerate(slots):
            if running.get(name, 0) >= limit:
                for taken, _ in slots[:i]:
                    await self.release(taken)
                await self.refund([t._replace(until=d.reset_at) for t, d in zip(takes, decisions, strict=True)])
                return decisions, i
            running[name] = running.get(name, 0) + 1
        return decisions, None

    async def finish(self, refunds: Sequence[Take], slots: Sequence[str]) -> None:
        if refunds:
            await self.refund(refunds)
        for name in slots:
            await self.release(name)


def _unspent(decision: Decision, take: Take) -> Decision:
    return Decision(True, decision.limit, min(decision.limit, decision.remaining + take.cost),
                    decision.reset_at - take.cost * take.quota.interval, 0.0)
