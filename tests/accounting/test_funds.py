"""Funds on a real SQLite store: what a start loads, what a refresh picks up, and the errors it raises."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from tollway.accounting.funds import Funds
from tollway.accounting.keys import new_key
from tollway.accounting.ledger import UsageLedger
from tollway.errors import BillingError, InvalidRequest, Overloaded
from tollway.protocol.catalog import LIST_PRICES
from tollway.store import UNLIMITED, AccountRecord, Budget, KeyRecord, LedgerEntry, SQLStore, UsageRecord

SONNET = LIST_PRICES["claude-sonnet-4-6"]
BODY = b'{"messages":[{"role":"user","content":"hi"}]}'
# What that body with max_tokens=10 reserves: (body + allowance) tokens at the 1-hour cache write's $6/M,
# plus 10 at $15/M.
RESERVE = (len(BODY) + 4096) * 6000 + 10 * 15000


async def make_key(store: SQLStore, name: str, budget: Budget = UNLIMITED, account: str | None = None,
                   account_budget: Budget | None = None) -> KeyRecord:
    record, _ = new_key(name, None)
    own = None
    if account is None:
        own = AccountRecord(id="acct_" + record.id[4:], name=name, created_at=record.created_at,
                            budget=account_budget or Budget())
        account = own.id
    record = dataclasses.replace(record, account_id=account, budget=budget)
    await store.insert_key(record, own)
    return record


def usage_row(request_id: str, key: KeyRecord, cost: int, at: datetime) -> UsageRecord:
    return UsageRecord(request_id=request_id, created_at=at, key_id=key.id, endpoint="messages",
                       model="claude-sonnet-4-6", upstream="fake", upstream_model=None, stream=False, status=200,
                       error_type=None, cost_nanousd=cost)


async def started(store: SQLStore, ledger: UsageLedger) -> Funds:
    funds = Funds(store, ledger.entry, refresh_interval=3600)
    await funds.start()
    return funds


async def test_a_request_reserves_then_settles_and_the_store_adds_up(store: SQLStore) -> None:
    key = await make_key(store, "alice")
    await store.topup(key.id, 50_000_000)
    ledger = UsageLedger(store, flush_interval=3600)
    funds = await started(store, ledger)
    try:
        assert funds.limited(key)
        hold = await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000)
        assert hold is not None and hold.amount == RESERVE
        assert funds.wallet.purses[key.id].balance == 50_000_000 - RESERVE
        await funds.settle(hold, 1234)
        await ledger.flush()
        balances, _ = await store.balances()
        assert balances[key.id] == funds.wallet.purses[key.id].balance == 50_000_000 - 1234
        entries = [e for _, e in await store.ledger_entries(owner=key.id)]
        assert [e.kind for e in entries] == ["topup", "reserve", "settle"]
        # Times are stored as integer microseconds and read back as UTC datetimes.
        assert all(abs(e.created_at - datetime.now(UTC)) < timedelta(minutes=1) for e in entries)
    finally:
        await funds.close()


async def test_a_spent_balance_raises_402_with_what_is_left(store: SQLStore) -> None:
    key = await make_key(store, "bob")
    await store.topup(key.id, RESERVE - 1)
    funds = await started(store, UsageLedger(store, 3600))
    try:
        with pytest.raises(BillingError) as caught:
            await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000)
        assert caught.value.status == 402
        assert "credit balance is too low" in caught.value.message
        assert f"${(RESERVE - 1) / 1e9:.6f}" in caught.value.message and "'bob'" in caught.value.message
        assert funds.wallet.purses[key.id].held == 0
    finally:
        await funds.close()


async def test_an_unpriced_model_reserves_nothing(store: SQLStore) -> None:
    key = await make_key(store, "carol")
    await store.topup(key.id, 1)
    funds = await started(store, UsageLedger(store, 3600))
    try:
        assert await funds.reserve("req_1", key, None, len(BODY), False, 10, None) is None
    finally:
        await funds.close()


async def test_a_spent_cap_is_a_400_naming_when_access_returns(store: SQLStore) -> None:
    key = await make_key(store, "dave", account_budget=Budget(cap_nanousd=RESERVE + 10, cap_period="day"))
    now = datetime.now(UTC)
    # Spent earlier today, by the key, in rows already stored: a start must count them against the cap.
    await store.insert_usage([usage_row("old_1", key, 20, now - timedelta(seconds=1))])
    funds = await started(store, UsageLedger(store, 3600))
    try:
        assert key.account_id is not None and funds.wallet.purses[key.account_id].spent == 20
        with pytest.raises(InvalidRequest) as caught:
            await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000)
        message = caught.value.message
        assert message.startswith("You have reached your specified API usage limits")
        tomorrow = (now + timedelta(days=1)).strftime("%Y-%m-%d")
        assert f"regain access on {tomorrow} at 00:00 UTC" in message and "'dave'" in message
    finally:
        await funds.close()


async def test_topups_and_budget_changes_from_another_process_arrive_on_refresh(store: SQLStore) -> None:
    key = await make_key(store, "erin")
    funds = await started(store, UsageLedger(store, 3600))
    try:
        assert not funds.limited(key)
        await store.topup(key.id, 5_000_000_000)  # as `tollway keys topup` does, from its own process
        await store.set_budget(key.account_id or "", {"cap_nanousd": 7, "cap_period": "month"})
        await funds.refresh()
        assert funds.limited(key)
        assert funds.wallet.purses[key.id].balance == 5_000_000_000
        assert key.account_id is not None
        assert funds.wallet.purses[key.account_id].budget == Budget(cap_nanousd=7, cap_period="month")
        await funds.refresh()  # the same top-up is never counted twice
        assert funds.wallet.purses[key.id].balance == 5_000_000_000
    finally:
        await funds.close()


async def test_a_restart_releases_what_cut_off_requests_held(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await make_key(store, "frank")
    await store.topup(key.id, 1_000_000_000)
    ledger = UsageLedger(store, 3600)
    funds = await started(store, ledger)
    hold = await funds.reserve("req_cut", key, SONNET, len(BODY), False, 10, 200_000)
    assert hold is not None
    await ledger.flush()  # the reserve reached the store; then the process dies without settling
    await funds.close()
    balances, _ = await store.balances()
    assert balances[key.id] == 1_000_000_000 - RESERVE

    if store.dialect != "sqlite":
        # Replicas share this store: a young open reserve may be a request another one is serving still.
        young = await started(store, UsageLedger(store, 3600))
        try:
            assert young.wallet.purses[key.id].balance == 1_000_000_000 - RESERVE
            assert len(await store.open_reserves()) == 1
        finally:
            await young.close()
        monkeypatch.setattr(Funds, "ORPHAN_AGE", 0.0)  # now it is old enough to have been cut off

    again = await started(store, UsageLedger(store, 3600))
    try:
        assert again.wallet.purses[key.id].balance == 1_000_000_000
        entries = await store.ledger_entries(owner=key.id)
        assert [(e.kind, e.amount_nanousd) for _, e in entries][-1] == ("release", RESERVE)
        assert await store.open_reserves() == []
    finally:
        await again.close()


async def test_entries_written_twice_count_once(store: SQLStore) -> None:
    key = await make_key(store, "gina")
    entry = LedgerEntry(1_764_000_000_000_000, key.id, "reserve", -5, "req_1")
    await store.insert_usage([], [entry])
    await store.insert_usage([], [entry])  # a batch retried after an unclear failure
    balances, _ = await store.balances()
    assert balances[key.id] == -5


async def test_refreshes_at_the_same_time_credit_a_topup_once(store: SQLStore) -> None:
    key = await make_key(store, "hana")
    funds = await started(store, UsageLedger(store, 3600))
    try:
        await store.topup(key.id, 1000)
        await asyncio.gather(*(funds.refresh() for _ in range(5)))  # the loop's and an admin call's, say
        assert funds.wallet.purses[key.id].balance == 1000
    finally:
        await funds.close()


async def test_a_key_made_after_the_last_refresh_is_loaded_before_its_first_request(store: SQLStore) -> None:
    funds = await started(store, UsageLedger(store, 3600))
    try:
        key = await make_key(store, "late", budget=Budget(prepaid=True))  # made by the CLI, after the start
        assert funds.limited(key)  # unknown to the wallet: it must be looked at, never served free
        with pytest.raises(BillingError):
            await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000)
        await store.topup(key.id, 10 * RESERVE)
        await funds.refresh()
        assert funds.wallet.purses[key.id].balance == 10 * RESERVE  # the top-up counted once
    finally:
        await funds.close()


async def test_a_cap_change_keeps_the_spend_followed_in_memory(store: SQLStore) -> None:
    key = await make_key(store, "ivan", budget=Budget(cap_nanousd=10 * RESERVE, cap_period="day"))
    ledger = UsageLedger(store, 3600)
    funds = await started(store, ledger)
    try:
        hold = await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000)
        assert hold is not None
        await funds.settle(hold, 9 * RESERVE)  # settled, its usage row not yet written
        await store.set_budget(key.id, {"cap_nanousd": 10 * RESERVE + 1, "cap_period": "month"})
        await funds.refresh()
        purse = funds.wallet.purses[key.id]
        assert (purse.budget.cap_period, purse.spent) == ("month", 9 * RESERVE)
        assert await funds.reserve("req_2", key, SONNET, len(BODY), False, 10, 200_000) is not None
        with pytest.raises(InvalidRequest):  # 9 settled + 1 held: no room for another
            await funds.reserve("req_3", key, SONNET, len(BODY), False, 10, 200_000)
    finally:
        await funds.close()


async def test_a_failed_spend_load_is_tried_again(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await make_key(store, "judy")
    now = datetime.now(UTC)
    await store.insert_usage([usage_row("old_1", key, 700, now)])
    funds = await started(store, UsageLedger(store, 3600))
    try:
        await store.set_budget(key.id, {"cap_nanousd": 1000, "cap_period": "month"})
        real = store.spend_by_key

        async def locked(since: datetime) -> dict[str, int]:
            raise RuntimeError("database is locked")

        monkeypatch.setattr(store, "spend_by_key", locked)
        with pytest.raises(RuntimeError):
            await funds.refresh()
        monkeypatch.setattr(store, "spend_by_key", real)
        await funds.refresh()
        assert funds.wallet.purses[key.id].spent == 700
    finally:
        await funds.close()


async def test_taking_money_back_is_one_step_with_its_check(store: SQLStore) -> None:
    key = await make_key(store, "kate")
    await store.topup(key.id, 10 * RESERVE)
    ledger = UsageLedger(store, 3600)
    funds = await started(store, ledger)
    try:
        hold = await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000)
        assert hold is not None
        async def must_not_write() -> None:
            raise AssertionError("a refused take-back wrote to the store")

        assert not await funds.take_back(key.id, 10 * RESERVE, must_not_write)  # 9 left: refused
        gate = asyncio.Event()

        async def slow_write() -> None:
            await gate.wait()
            await store.topup(key.id, -9 * RESERVE)

        taking = asyncio.create_task(funds.take_back(key.id, 9 * RESERVE, slow_write))
        await asyncio.sleep(0)
        with pytest.raises(BillingError):  # while the write is on its way, the money is already gone
            await funds.reserve("req_2", key, SONNET, len(BODY), False, 10, 200_000)
        gate.set()
        assert await taking
        await funds.settle(hold, RESERVE)
        await funds.refresh()  # reads the negative top-up back: counted once
        await ledger.flush()
        balances, _ = await store.balances()
        assert funds.wallet.purses[key.id].balance == balances[key.id] == 0
    finally:
        await funds.close()


async def test_money_requests_are_turned_away_while_too_many_entries_wait_for_the_database(
        sqlite_store: SQLStore) -> None:
    key = await make_key(sqlite_store, "waiting")
    await sqlite_store.topup(key.id, 10 * RESERVE)
    waiting = [Funds.MAX_BACKLOG - 1]
    funds = Funds(sqlite_store, UsageLedger(sqlite_store, 3600).entry, 3600, backlog=lambda: waiting[0])
    await funds.start()
    try:
        assert await funds.reserve("req_1", key, SONNET, len(BODY), False, 10, 200_000) is not None
        waiting[0] += 1
        with pytest.raises(Overloaded) as refused:
            await funds.reserve("req_2", key, SONNET, len(BODY), False, 10, 200_000)
        assert refused.value.status == 529 and refused.value.headers == {"retry-after": "5"}
    finally:
        await funds.close()


async def test_a_seed_counts_a_late_request_once_whenever_its_entries_reached_the_store(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed of a shared balance: a late request (settled while Redis had no hash for its owner) closed in
    the very entries the balance is summed from is counted there and not again, whatever a separate look-up
    of stored requests said a moment earlier (it said 'not stored' here, as when the flush lands between)."""
    key = await make_key(store, "seeded", Budget(prepaid=True))
    await store.topup(key.id, 1_000_000)
    at = datetime.now(UTC)
    us = int(at.timestamp() * 1_000_000)
    closed = [LedgerEntry(us, key.id, "reserve", -5000, "req_closed"), LedgerEntry(us, key.id, "settle", 4000,
                                                                                   "req_closed")]
    running = [LedgerEntry(us, key.id, "reserve", -7000, "req_running")]
    await store.insert_usage([usage_row("req_closed", key, 1000, at)], [*closed, *running])
    funds = Funds(store, UsageLedger(store, 3600).entry, 3600)

    async def nothing_yet(_: object) -> frozenset[str]:
        return frozenset()

    monkeypatch.setattr(store, "stored_requests", nothing_yet)
    seed = await funds._seed(key.id, ["req_closed", "req_running"])
    assert seed.balance == 1_000_000 - 1000  # the top-up and the closed request; the running one left out
    assert seed.stored == {"req_closed"}  # so its late note is not counted a second time
