"""Balances and spending caps: reserve before relaying, settle after.

A request first reserves the most it can cost from every owner (its key, its account) that has a money
limit, all or nothing. Once it has ended it settles: the real cost is kept and the rest of the reserve
given back. A balance can therefore never be overdrawn by requests running at the same time, the check
and the deduction being one step; only a request costing more than its reserve could (and the reserve
is an upper bound, see `tollway.accounting.pricing.reserve_nanousd`).

Each change to a prepaid balance leaves a `LedgerEntry` (reserve, settle or release) for the store, so
the ledger always adds up to the balance. Caps count what was settled in the current UTC day or month
plus what is reserved now; a new period starts from zero on its own, with no reset job. Both the day's and
the month's spend are counted for every limited owner, so a cap moved from one period to the other needs
nothing reloaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from tollway.store import UNLIMITED, Budget, LedgerEntry

log = logging.getLogger("tollway.wallet")


def period_of(when: datetime, period: str | None) -> str:
    """The calendar period (UTC) ``when`` falls in: ``2026-11-25`` for a day, ``2026-11`` for a month."""
    return when.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_start(when: datetime, period: str | None) -> datetime:
    day = when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def next_period(when: datetime, period: str | None) -> datetime:
    start = period_start(when, period)
    if period == "day":
        return datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


@dataclass(slots=True)
class Purse:
    """One owner's money, as this process knows it."""

    budget: Budget = UNLIMITED
    balance: int = 0
    """Nano-dollars: the ledger's sum, that is top-ups less settled costs less what is reserved now. Only
    requests made while the owner is prepaid draw on it."""
    held: int = 0
    """Reserved by requests still running."""
    spent_day: int = 0
    """Settled in ``day``."""
    spent_month: int = 0
    """Settled in ``month``."""
    day: str = ""
    month: str = ""
    day_ends: float = 0.0
    """Epoch seconds at which ``day`` ends (and with it, sometimes, ``month``): checked with one comparison,
    not a date format per request."""
    tracked: bool = False
    """The spend counters follow every request: set once they are loaded from the store, cleared while the
    owner has no money limit (its requests then skip the wallet)."""

    @property
    def spent(self) -> int:
        """Settled in the period of the owner's cap (a month when it has none)."""
        return self.spent_day if self.budget.cap_period == "day" else self.spent_month

    @property
    def period(self) -> str:
        return self.day if self.budget.cap_period == "day" else self.month


class Hold(NamedTuple):
    """What one request reserved: from which owners, and whether each was prepaid then."""

    request_id: str
    amount: int
    owners: tuple[tuple[str, bool], ...]
    tokens: tuple[str, ...] = ()
    """For a shared wallet: the seed of each owner's state the reserve was taken from."""


class Refusal(NamedTuple):
    owner: str
    reason: str
    """``balance`` or ``cap``."""
    available: int
    """What the balance, or the cap, has left for new requests."""
    needed: int
    resets_at: datetime | None = None
    """When a cap's period ends."""


class Seed(NamedTuple):
    """An owner's money as the store has it, for a new hash."""

    balance: int
    """The ledger's sum over top-ups and closed requests."""
    topup_mark: int
    """The id of the last top-up counted in ``balance``."""
    spent: dict[str, int]
    """Settled spend by period label (the current day's and month's)."""
    stored: frozenset[str]
    """Of the late requests asked about, those whose rows the store has."""
    last_request_us: int | None = None
    """When the store's newest entry made by a request (of any owner) was written."""


SeedSource = Callable[[str, Sequence[str]], Awaitable[Seed]]


class Wallet(Protocol):
    """Where balances and caps live: this process (`MemoryWallet`) or Redis, shared by every replica
    (`tollway.accounting.shared_wallet.SharedWallet`). Budgets are held by each process either way."""

    def set_budget(self, owner: str, budget: Budget) -> None: ...

    def budget(self, owner: str) -> Budget: ...

    def known(self, owner: str) -> bool:
        """Whether this owner's budget has been loaded."""

    def limited(self, owners: Iterable[str | None]) -> bool:
        """Whether any of these owners has a money limit (otherwise requests skip the wallet)."""

    async def reserve(self, request_id: str, owners: Sequence[str], amount: int) -> Hold | Refusal:
        """Reserve ``amount`` from every limited owner, or from none and say why."""

    async def settle(self, hold: Hold, cost: int) -> None:
        """The request has ended having cost ``cost``: keep that, give back the rest."""


class MemoryWallet:
    """Exact under any concurrency within one process: no purse is read and written across an ``await``."""

    def __init__(self, sink: Callable[[LedgerEntry], None], clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self._clock = clock
        self.purses: dict[str, Purse] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def purse(self, owner: str) -> Purse:
        purse = self.purses.get(owner)
        if purse is None:
            purse = self.purses[owner] = Purse()
        return purse

    def budget(self, owner: str) -> Budget:
        purse = self.purses.get(owner)
        return UNLIMITED if purse is None else purse.budget

    def known(self, owner: str) -> bool:
        return owner in self.purses

    def set_budget(self, owner: str, budget: Budget) -> None:
        purse = self.purse(owner)
        purse.budget = budget
        if not budget.limited:
            purse.tracked = False

    def credit(self, owner: str, amount: int) -> None:
        """A top-up, already in the ledger."""
        self.purse(owner).balance += amount

    def set_spent(self, owner: str, spent: dict[str, int]) -> None:
        """What ``owner`` has spent, by period label, as the store counts it: the current day's and month's
        figures are kept, and from now on the counters follow its requests."""
        purse = self.purse(owner)
        self._roll(purse, self._clock())
        purse.spent_day, purse.spent_month = spent.get(purse.day, 0), spent.get(purse.month, 0)
        purse.tracked = True

    def limited(self, owners: Iterable[str | None]) -> bool:
        purses = self.purses
        for owner in owners:
            purse = purses.get(owner) if owner is not None else None
            if purse is not None and purse.budget.limited:
                return True
        return False

    @staticmethod
    def _roll(purse: Purse, ts: float) -> None:
        if ts < purse.day_ends:
            return
        when = datetime.fromtimestamp(ts, UTC)
        day, month = period_of(when, "day"), period_of(when, "month")
        purse.day_ends = next_period(when, "day").timestamp()
        if purse.day != day:
            purse.day, purse.spent_day = day, 0
        if purse.month != month:
            purse.month, purse.spent_month = month, 0

    async def reserve(self, request_id: str, owners: Sequence[str], amount: int) -> Hold | Refusal:
        ts = self._clock()
        taken: list[tuple[Purse, str, bool]] = []
        for owner in owners:
            purse = self.purses.get(owner)
            if purse is None or not purse.budget.limited:
                continue
            budget = purse.budget
            if budget.prepaid and purse.balance < amount:
                return Refusal(owner, "balance", max(0, purse.balance), amount)
            if budget.cap_nanousd is not None:
                self._roll(purse, ts)
                left = budget.cap_nanousd - purse.spent - purse.held
                if left < amount:
                    ends = next_period(datetime.fromtimestamp(ts, UTC), budget.cap_period)
                    return Refusal(owner, "cap", max(0, left), amount, ends)
            taken.append((purse, owner, budget.prepaid))
        at_us = round(ts * 1_000_000)
        # Every owner has room: take it from all of them, with no await in between.
        for purse, owner, prepaid in taken:
            purse.held += amount
            if prepaid:
                purse.balance -= amount
                self._sink(LedgerEntry(at_us, owner, "reserve", -amount, request_id))
        return Hold(request_id, amount, tuple((owner, prepaid) for _, owner, prepaid in taken))

    async def settle(self, hold: Hold, cost: int) -> None:
        ts = self._clock()
        at_us = round(ts * 1_000_000)
        if cost > hold.amount:
            log.warning("request %s cost %d nano-USD, more than the %d it reserved", hold.request_id, cost,
                        hold.amount)
        for owner, prepaid in hold.owners:
            purse = self.purse(owner)
            self._roll(purse, ts)
            purse.held -= hold.amount
            purse.spent_day += cost
            purse.spent_month += cost
            if prepaid:
                purse.balance += hold.amount - cost
                kind = "settle" if cost else "release"
                self._sink(LedgerEntry(at_us, owner, kind, hold.amount - cost, hold.request_id))
