"""The in-memory wallet: reserve, settle, caps per period (with an injected clock), and concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tollway.accounting.wallet import Hold, MemoryWallet, Refusal, next_period, period_of, period_start
from tollway.store import Budget, LedgerEntry

PREPAID = Budget(prepaid=True)


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


def wallet(when: datetime = datetime(2026, 11, 25, 12, tzinfo=UTC)) -> tuple[MemoryWallet, list[LedgerEntry], Clock]:
    entries: list[LedgerEntry] = []
    clock = Clock(when)
    return MemoryWallet(entries.append, clock), entries, clock


def funded(w: MemoryWallet, owner: str, balance: int, budget: Budget = PREPAID) -> None:
    w.set_budget(owner, budget)
    w.credit(owner, balance)


def ledger_sum(entries: list[LedgerEntry], owner: str) -> int:
    return sum(e.amount_nanousd for e in entries if e.owner == owner)


async def test_reserve_then_settle_keeps_the_cost_and_gives_back_the_rest() -> None:
    w, entries, _ = wallet()
    funded(w, "key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold)
    assert (w.purses["key_a"].balance, w.purses["key_a"].held) == (700, 300)
    await w.settle(hold, 120)
    assert (w.purses["key_a"].balance, w.purses["key_a"].held) == (880, 0)
    assert [(e.kind, e.amount_nanousd, e.request_id) for e in entries] == [
        ("reserve", -300, "req_1"), ("settle", 180, "req_1")]
    # The entries add up to the change in balance (the top-up itself is the store's entry).
    assert 1000 + ledger_sum(entries, "key_a") == w.purses["key_a"].balance


async def test_a_request_that_cost_nothing_is_released() -> None:
    w, entries, _ = wallet()
    funded(w, "key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold)
    await w.settle(hold, 0)
    assert [(e.kind, e.amount_nanousd) for e in entries] == [("reserve", -300), ("release", 300)]
    assert w.purses["key_a"].balance == 1000


async def test_a_reserve_that_does_not_fit_is_refused_and_takes_nothing() -> None:
    w, entries, _ = wallet()
    funded(w, "key_a", 299)
    refusal = await w.reserve("req_1", ["key_a"], 300)
    assert refusal == Refusal("key_a", "balance", 299, 300)
    assert (w.purses["key_a"].balance, w.purses["key_a"].held, entries) == (299, 0, [])


async def test_both_the_key_and_its_account_must_hold_or_neither_is_charged() -> None:
    w, entries, _ = wallet()
    funded(w, "key_a", 10_000)
    funded(w, "acct_a", 100)
    refusal = await w.reserve("req_1", ["key_a", "acct_a"], 300)
    assert isinstance(refusal, Refusal) and refusal.owner == "acct_a"
    assert w.purses["key_a"].balance == 10_000 and entries == []
    w.credit("acct_a", 1000)
    hold = await w.reserve("req_2", ["key_a", "acct_a"], 300)
    assert isinstance(hold, Hold)
    await w.settle(hold, 50)
    assert (w.purses["key_a"].balance, w.purses["acct_a"].balance) == (9_950, 1_050)
    assert {e.owner for e in entries} == {"key_a", "acct_a"}


async def test_owners_without_money_limits_are_not_touched() -> None:
    w, entries, _ = wallet()
    w.set_budget("key_free", Budget())
    assert not w.limited(["key_free", None, "acct_unknown"])
    funded(w, "acct_a", 1000)
    assert w.limited(["key_free", "acct_a"])
    hold = await w.reserve("req_1", ["key_free", "acct_a"], 300)
    assert isinstance(hold, Hold) and hold.owners == (("acct_a", True),)
    await w.settle(hold, 100)
    assert w.purses["key_free"].balance == 0
    assert all(e.owner == "acct_a" for e in entries)


async def test_a_cap_counts_settled_and_reserved_spend_and_names_its_reset() -> None:
    w, entries, _ = wallet(datetime(2026, 11, 25, 23, 0, tzinfo=UTC))
    w.set_budget("key_a", Budget(cap_nanousd=1000, cap_period="day"))
    first = await w.reserve("r1", ["key_a"], 600)
    assert isinstance(first, Hold)
    refused = await w.reserve("r2", ["key_a"], 600)  # 600 held + 600 > 1000
    assert refused == Refusal("key_a", "cap", 400, 600, datetime(2026, 11, 26, tzinfo=UTC))
    await w.settle(first, 500)
    assert w.purses["key_a"].spent == 500
    assert isinstance(await w.reserve("r3", ["key_a"], 500), Hold)
    assert entries == []  # a cap alone is not a balance: nothing for the ledger


async def test_a_daily_cap_starts_over_at_midnight_utc() -> None:
    w, _, clock = wallet(datetime(2026, 11, 25, 23, 59, 59, tzinfo=UTC))
    w.set_budget("key_a", Budget(cap_nanousd=1000, cap_period="day"))
    hold = await w.reserve("r1", ["key_a"], 1000)
    assert isinstance(hold, Hold)
    await w.settle(hold, 1000)
    assert isinstance(await w.reserve("r2", ["key_a"], 1), Refusal)
    clock.set(datetime(2026, 11, 26, 0, 0, 0, tzinfo=UTC))
    assert isinstance(await w.reserve("r3", ["key_a"], 1000), Hold)


async def test_a_monthly_cap_starts_over_on_the_first_and_across_the_year() -> None:
    w, _, clock = wallet(datetime(2026, 12, 31, 22, tzinfo=UTC))
    w.set_budget("acct_a", Budget(cap_nanousd=1000, cap_period="month"))
    hold = await w.reserve("r1", ["acct_a"], 900)
    assert isinstance(hold, Hold)
    await w.settle(hold, 900)
    refusal = await w.reserve("r2", ["acct_a"], 200)
    assert isinstance(refusal, Refusal) and refusal.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    clock.set(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert isinstance(await w.reserve("r3", ["acct_a"], 1000), Hold)


async def test_a_request_spanning_midnight_counts_in_the_day_it_settles() -> None:
    w, _, clock = wallet(datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    w.set_budget("key_a", Budget(cap_nanousd=1000, cap_period="day"))
    hold = await w.reserve("r1", ["key_a"], 800)
    assert isinstance(hold, Hold)
    clock.set(datetime(2026, 11, 26, 0, 1, tzinfo=UTC))
    # Still held across the new day: the cap cannot be passed by requests started before midnight.
    assert isinstance(await w.reserve("r2", ["key_a"], 300), Refusal)
    await w.settle(hold, 700)
    assert w.purses["key_a"].spent == 700 and w.purses["key_a"].period == "2026-11-26"


async def test_hundreds_of_concurrent_reserves_never_overdraw() -> None:
    w, entries, _ = wallet()
    funded(w, "key_a", 10_000)

    async def one(i: int) -> Hold | Refusal:
        result = await w.reserve(f"r{i}", ["key_a"], 700)
        await asyncio.sleep(0)  # let the others interleave while this one is "in flight"
        return result

    results = await asyncio.gather(*(one(i) for i in range(500)))
    holds = [r for r in results if isinstance(r, Hold)]
    assert len(holds) == 10_000 // 700
    assert w.purses["key_a"].balance == 10_000 - 700 * len(holds) >= 0
    await asyncio.gather(*(w.settle(h, 650) for h in holds))
    assert w.purses["key_a"].balance == 10_000 - 650 * len(holds)
    assert 10_000 + ledger_sum(entries, "key_a") == w.purses["key_a"].balance


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
