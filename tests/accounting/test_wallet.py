"""The wallet contract, run on both wallets: in this process (`MemoryWallet`) and in Redis (`SharedWallet`,
seeded from a store that each test fills in below the wallet). Reserve, settle, caps per period (with an
injected clock) and concurrency must behave the same on both."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from tollway.accounting.shared_wallet import SharedWallet
from tollway.accounting.wallet import Hold, MemoryWallet, Purse, Refusal, Seed, next_period, period_of, period_start
from tollway.limits.redis import connect
from tollway.store import Budget, LedgerEntry

PREPAID = Budget(prepaid=True)
NOON = datetime(2026, 11, 25, 12, tzinfo=UTC)


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


class Backend:
    """One wallet under test, with what a test needs around it: money put in as a top-up would, and the
    live figures read back."""

    def __init__(self, kind: str, redis_url: str | None, prefix: str, when: datetime) -> None:
        self.entries: list[LedgerEntry] = []
        self.clock = Clock(when)
        self.kind = kind
        self._stored: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.w: MemoryWallet | SharedWallet
        if redis_url is None:
            self.w = MemoryWallet(self.entries.append, self.clock)
        else:
            self.w = SharedWallet(connect(redis_url, timeout=5.0), self._seed, self.entries.append, prefix=prefix,
                                  grace=0.0, clock=self.clock, owns_client=True)

    async def _seed(self, owner: str, late: Sequence[str]) -> Seed:
        return Seed(self._stored.get(owner, 0), 0, {}, frozenset())

    async def fund(self, owner: str, amount: int, budget: Budget | None = PREPAID) -> None:
        """Set the budget (unless None) and top up ``amount``."""
        if budget is not None:
            self.w.set_budget(owner, budget)
        if isinstance(self.w, MemoryWallet):
            self.w.credit(owner, amount)
            return
        self._stored[owner] = self._stored.get(owner, 0) + amount
        await self.w.credit([(next(self._ids), LedgerEntry(0, owner, "topup", amount))])

    async def purse(self, owner: str) -> Purse:
        if isinstance(self.w, MemoryWallet):
            return self.w.purses.get(owner) or Purse()
        return (await self.w.snapshot([owner])).get(owner) or Purse()

    async def figures(self, owner: str) -> tuple[int, int]:
        purse = await self.purse(owner)
        return purse.balance, purse.held


Make = Callable[..., Backend]


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    made: list[Backend] = []

    def make(when: datetime = NOON) -> Backend:
        if request.param == "memory":
            made.append(Backend("memory", None, "", when))
        else:
            made.append(Backend("redis", request.getfixturevalue("redis_url"),
                                request.getfixturevalue("redis_prefix"), when))
        return made[-1]

    yield make
    for b in made:
        if isinstance(b.w, SharedWallet):
            await b.w.close()


def ledger_sum(entries: list[LedgerEntry], owner: str) -> int:
    return sum(e.amount_nanousd for e in entries if e.owner == owner)


async def test_reserve_then_settle_keeps_the_cost_and_gives_back_the_rest(backend: Make) -> None:
    b = backend()
    w, entries = b.w, b.entries
    await b.fund("key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold)
    assert await b.figures("key_a") == (700, 300)
    await w.settle(hold, 120)
    assert await b.figures("key_a") == (880, 0)
    assert [(e.kind, e.amount_nanousd, e.request_id) for e in entries] == [
        ("reserve", -300, "req_1"), ("settle", 180, "req_1")]
    # The entries add up to the change in balance (the top-up itself is the store's entry).
    assert 1000 + ledger_sum(entries, "key_a") == (await b.figures("key_a"))[0]


async def test_a_request_that_cost_nothing_is_released(backend: Make) -> None:
    b = backend()
    w, entries = b.w, b.entries
    await b.fund("key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold)
    await w.settle(hold, 0)
    assert [(e.kind, e.amount_nanousd) for e in entries] == [("reserve", -300), ("release", 300)]
    assert (await b.figures("key_a"))[0] == 1000


async def test_a_reserve_that_does_not_fit_is_refused_and_takes_nothing(backend: Make) -> None:
    b = backend()
    w, entries = b.w, b.entries
    await b.fund("key_a", 299)
    refusal = await w.reserve("req_1", ["key_a"], 300)
    assert refusal == Refusal("key_a", "balance", 299, 300)
    assert (await b.figures("key_a"), entries) == ((299, 0), [])


async def test_both_the_key_and_its_account_must_hold_or_neither_is_charged(backend: Make) -> None:
    b = backend()
    w, entries = b.w, b.entries
    await b.fund("key_a", 10_000)
    await b.fund("acct_a", 100)
    refusal = await w.reserve("req_1", ["key_a", "acct_a"], 300)
    assert isinstance(refusal, Refusal) and refusal.owner == "acct_a"
    assert (await b.figures("key_a"))[0] == 10_000 and entries == []
    await b.fund("acct_a", 1000, None)
    hold = await w.reserve("req_2", ["key_a", "acct_a"], 300)
    assert isinstance(hold, Hold)
    await w.settle(hold, 50)
    assert ((await b.figures("key_a"))[0], (await b.figures("acct_a"))[0]) == (9_950, 1_050)
    assert {e.owner for e in entries} == {"key_a", "acct_a"}


async def test_owners_without_money_limits_are_not_touched(backend: Make) -> None:
    b = backend()
    w, entries = b.w, b.entries
    w.set_budget("key_free", Budget())
    assert not w.limited(["key_free", None, "acct_unknown"])
    await b.fund("acct_a", 1000)
    assert w.limited(["key_free", "acct_a"])
    hold = await w.reserve("req_1", ["key_free", "acct_a"], 300)
    assert isinstance(hold, Hold) and hold.owners == (("acct_a", True),)
    await w.settle(hold, 100)
    assert (await b.figures("key_free"))[0] == 0
    assert all(e.owner == "acct_a" for e in entries)


async def test_a_cap_counts_settled_and_reserved_spend_and_names_its_reset(backend: Make) -> None:
    b = backend(datetime(2026, 11, 25, 23, 0, tzinfo=UTC))
    w, entries = b.w, b.entries
    w.set_budget("key_a", Budget(cap_nanousd=1000, cap_period="day"))
    first = await w.reserve("r1", ["key_a"], 600)
    assert isinstance(first, Hold)
    refused = await w.reserve("r2", ["key_a"], 600)  # 600 held + 600 > 1000
    assert refused == Refusal("key_a", "cap", 400, 600, datetime(2026, 11, 26, tzinfo=UTC))
    await w.settle(first, 500)
    assert (await b.purse("key_a")).spent == 500
    assert isinstance(await w.reserve("r3", ["key_a"], 500), Hold)
    assert entries == []  # a cap alone is not a balance: nothing for the ledger


async def test_a_daily_cap_starts_over_at_midnight_utc(backend: Make) -> None:
    b = backend(datetime(2026, 11, 25, 23, 59, 59, tzinfo=UTC))
    w, clock = b.w, b.clock
    w.set_budget("key_a", Budget(cap_nanousd=1000, cap_period="day"))
    hold = await w.reserve("r1", ["key_a"], 1000)
    assert isinstance(hold, Hold)
    await w.settle(hold, 1000)
    assert isinstance(await w.reserve("r2", ["key_a"], 1), Refusal)
    clock.set(datetime(2026, 11, 26, 0, 0, 0, tzinfo=UTC))
    assert isinstance(await w.reserve("r3", ["key_a"], 1000), Hold)


async def test_a_monthly_cap_starts_over_on_the_first_and_across_the_year(backend: Make) -> None:
    b = backend(datetime(2026, 12, 31, 22, tzinfo=UTC))
    w, clock = b.w, b.clock
    w.set_budget("acct_a", Budget(cap_nanousd=1000, cap_period="month"))
    hold = await w.reserve("r1", ["acct_a"], 900)
    assert isinstance(hold, Hold)
    await w.settle(hold, 900)
    refusal = await w.reserve("r2", ["acct_a"], 200)
    assert isinstance(refusal, Refusal) and refusal.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    clock.set(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert isinstance(await w.reserve("r3", ["acct_a"], 1000), Hold)


async def test_a_request_spanning_midnight_counts_in_the_day_it_settles(backend: Make) -> None:
    b = backend(datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    w, clock = b.w, b.clock
    w.set_budget("key_a", Budget(cap_nanousd=1000, cap_period="day"))
    hold = await w.reserve("r1", ["key_a"], 800)
    assert isinstance(hold, Hold)
    clock.set(datetime(2026, 11, 26, 0, 1, tzinfo=UTC))
    # Still held across the new day: the cap cannot be passed by requests started before midnight.
    assert isinstance(await w.reserve("r2", ["key_a"], 300), Refusal)
    await w.settle(hold, 700)
    purse = await b.purse("key_a")
    assert purse.spent == 700 and purse.period == "2026-11-26"


async def test_hundreds_of_concurrent_reserves_never_overdraw(backend: Make) -> None:
    b = backend()
    w, entries = b.w, b.entries
    await b.fund("key_a", 10_000)

    async def one(i: int) -> Hold | Refusal:
        result = await w.reserve(f"r{i}", ["key_a"], 700)
        await asyncio.sleep(0)  # let the others interleave while this one is "in flight"
        return result

    results = await asyncio.gather(*(one(i) for i in range(500)))
    holds = [r for r in results if isinstance(r, Hold)]
    assert len(holds) == 10_000 // 700
    assert (await b.figures("key_a"))[0] == 10_000 - 700 * len(holds) >= 0
    await asyncio.gather(*(w.settle(h, 650) for h in holds))
    assert await b.figures("key_a") == (10_000 - 650 * len(holds), 0)
    assert 10_000 + ledger_sum(entries, "key_a") == (await b.figures("key_a"))[0]


@pytest.mark.parametrize(("when", "period", "label", "start", "nxt"), [
    (datetime(2026, 2, 28, 13, tzinfo=UTC), "day", "2026-02-28", datetime(2026, 2, 28, tzinfo=UTC),
     datetime(2026, 3, 1, tzinfo=UTC)),
    (datetime(2028, 2, 28, 13, tzinfo=UTC), "day", "2028-02-28", datetime(2028, 2, 28, tzinfo=UTC),
     datetime(2028, 2, 29, tzinfo=UTC)),
    (datetime(2026, 12, 15, tzinfo=UTC), "month", "2026-12", datetime(2026, 12, 1, tzinfo=UTC),
     datetime(2027, 1, 1, tzinfo=UTC)),
    (datetime(2026, 1, 31, 23, 59, tzinfo=UTC), "month", "2026-01", datetime(2026, 1, 1, tzinfo=UTC),
     datetime(2026, 2, 1, tzinfo=UTC)),
])
def test_periods(when: datetime, period: str, label: str, start: datetime, nxt: datetime) -> None:
    assert (period_of(when, period), period_start(when, period), next_period(when, period)) == (label, start, nxt)
