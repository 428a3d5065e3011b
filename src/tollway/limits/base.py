"""The limiter interface and the generic cell rate algorithm (GCRA) it is built on.

GCRA is a token bucket kept as one number per limit: the theoretical arrival time (TAT), the moment the
bucket would be full again. A limit of ``limit`` units per ``period`` seconds refills one unit every
``T = period / limit`` seconds and holds at most ``limit`` units. Taking ``cost`` units moves TAT to
``max(TAT, now) + cost * T``; that is allowed if the new TAT is at most ``now + period`` (the bucket
held ``cost`` units). It needs no timer and no reset job, and a refund moves TAT back. No library on PyPI
fits: the well-kept rate-limit libraries count requests in windows, not weighted token buckets, and
GCRA is a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    """Units per period (requests, or tokens)."""
    period: float = 60.0
    interval: float = field(init=False, repr=False, compare=False)
    """Seconds per unit; worked out once, since it is read several times per request."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", self.period / self.limit)


# Take and Decision are named tuples: several are made per request, and a frozen dataclass costs a
# few times more to build.
class Take(NamedTuple):
    name: str
    """What is limited, e.g. ``key_abc:rpm``."""
    cost: int
    quota: Quota
    until: float | None = None
    """For a refund: the ``reset_at`` the take was given. A refund gives back at most what the bucket has
    not regained on its own since then, so it never frees capacity twice."""


class Decision(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    """Units left after this take (or before it, when refused)."""
    reset_at: float
    """Epoch seconds at which the bucket is full again."""
    retry_after: float
    """Seconds until this take would fit; 0 when allowed."""


# A named tuple's own constructor is a Python function: calling tuple's directly costs about half as much,
# and the hot path builds several per request. Only for tuples whose every field is given.
new_tuple = tuple.__new__


def gcra(tat: float, now: float, cost: int, quota: Quota) -> tuple[float, Decision]:
    """The new TAT and the decision for taking ``cost`` at ``now`` from a bucket whose TAT is ``tat``."""
    # Comparisons rather than max(): the builtin costs several times more, and this runs per bucket per request.
    base = tat if tat > now else now
    interval, period = quota.interval, quota.period
    new_tat = base + cost * interval
    allow_at = new_tat - period
    if allow_at > now + 1e-9:
        remaining = math.floor((now + period - base) / interval + 1e-9)
        # A cost larger than the whole bucket can never fit: its wait is reported as one full period.
        wait = period if cost > quota.limit else allow_at - now
        return tat, new_tuple(Decision, (False, quota.limit, remaining if remaining > 0 else 0, base, wait))
    remaining = math.floor((now + period - new_tat) / interval + 1e-9)
    return new_tat, new_tuple(Decision, (True, quota.limit, remaining if remaining > 0 else 0, new_tat, 0.0))


class Limiter(Protocol):
    async def take(self, takes: Sequence[Take]) -> list[Decision]:
        """Take every cost or none: if one limit refuses, nothing is taken from the others."""

    async def refund(self, takes: Sequence[Take]) -> None:
        """Give back units taken but not used (an output estimate above the real count)."""

    async def acquire(self, name: str, limit: int) -> bool:
        """One more concurrent request under ``name``, if fewer than ``limit`` are running."""

    async def release(self, name: str) -> None:
        """A concurrent request under ``name`` has ended."""

    async def admit(self, takes: Sequence[Take], slots: Sequence[tuple[str, int]]) -> tuple[list[Decision], int | None]:
        """`take` and then `acquire` every ``(name, limit)`` slot, all or nothing, in one step where the backend
        can (one round trip to Redis rather than one per call): the decisions, and the index of the first
        slot found full (None when each had room; slots are not tried when a take is refused)."""

    async def finish(self, refunds: Sequence[Take], slots: Sequence[str]) -> None:
        """`refund` and `release` together, in one step where the backend can."""
