"""Limits kept in this process: exact under any concurrency, since no counter is read and written across
an ``await``; they do not add up across processes or replicas.

The async methods are the `Limiter` interface; the work is in plain methods, so that `admit` and `finish`
(one call each per limited request) do not pay for a coroutine per step they combine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tollway.limits.base import Decision, Take, gcra, new_tuple


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._running: dict[str, int] = {}

    async def take(self, takes: Sequence[Take]) -> list[Decision]:
        return self._take(takes)

    async def refund(self, takes: Sequence[Take]) -> None:
        self._refund(takes)

    async def acquire(self, name: str, limit: int) -> bool:
        running = self._running.get(name, 0)
        if running >= limit:
            return False
        self._running[name] = running + 1
        return True

    async def release(self, name: str) -> None:
        self._release(name)

    async def admit(self, takes: Sequence[Take], slots: Sequence[tuple[str, int]]) -> tuple[list[Decision], int | None]:
        decisions = self._take(takes) if takes else []
        for d in decisions:
            if not d.allowed:
                return decisions, None
        running = self._running
        for i, (name, limit) in enumerate(slots):
            held = running.get(name, 0)
            if held >= limit:
                for taken, _ in slots[:i]:
                    self._release(taken)
                self._refund([t._replace(until=d.reset_at) for t, d in zip(takes, decisions, strict=True)])
                return decisions, i
            running[name] = held + 1
        return decisions, None

    async def finish(self, refunds: Sequence[Take], slots: Sequence[str]) -> None:
        if refunds:
            self._refund(refunds)
        for name in slots:
            self._release(name)

    def _take(self, takes: Sequence[Take]) -> list[Decision]:
        now = self._clock()
        tats = self._tat
        decisions: list[Decision] = []
        moved: list[tuple[str, float]] = []
        refused = 0
        # Every bucket is judged against its TAT before this call, then all are moved or none.
        for name, cost, quota, _ in takes:
            try:
                tat = tats[name]
            except KeyError:
                tat = now
            tat, d = gcra(tat, now, cost, quota)
            decisions.append(d)
            moved.append((name, tat))
            if not d[0]:  # allowed
                refused += 1
        if not refused:
            for name, tat in moved:
                tats[name] = tat
        elif refused < len(decisions):
            # All or nothing: the limits that would have allowed it report what they still hold.
            decisions = [d if not d.allowed else _unspent(d, take) for take, d in zip(takes, decisions, strict=True)]
        return decisions

    def _refund(self, takes: Sequence[Take]) -> None:
        now = self._clock()
        tats = self._tat
        for name, cost, quota, until in takes:
            tat = tats.get(name)
            if tat is None or cost <= 0:
                continue
            seconds = cost * quota.interval
            if until is not None:
                # Never more than the bucket has not regained on its own since the take.
                left = until - now
                if left < seconds:
                    seconds = left if left > 0.0 else 0.0
            back = tat - seconds
            tats[name] = back if back > now else now

    def _release(self, name: str) -> None:
        left = self._running.get(name, 0) - 1
        self._running[name] = left if left > 0 else 0


def _unspent(decision: Decision, take: Take) -> Decision:
    remaining = decision.remaining + take.cost
    return new_tuple(Decision, (True, decision.limit, remaining if remaining < decision.limit else decision.limit,
                                decision.reset_at - take.cost * take.quota.interval, 0.0))
