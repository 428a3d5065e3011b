"""PostgreSQL lets transactions commit out of the order of the ids they drew. A reader that counted the ledger
up to an id must still see every top-up at or below it: it waits for top-ups in flight."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import insert, text

from tollway.store import AccountRecord, LedgerEntry, SQLStore, schema
from tollway.store.sql import _TOPUP_LOCK

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STILL_WAITING = 0.2


async def test_readers_wait_for_a_topup_that_drew_an_earlier_id(postgres_store: SQLStore) -> None:
    store = postgres_store
    await store.insert_account(AccountRecord("acct_x", "x", T0))
    async with store.engine.connect() as slow:
        # A top-up as topup() makes it, stopped between drawing its id and committing.
        await slow.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _TOPUP_LOCK})
        await slow.execute(insert(schema.ledger).values(at_us=1, owner="acct_x", kind="topup", amount_nanousd=50))
        # Meanwhile a request's batch commits, with a later id.
        await store.insert_usage([], [LedgerEntry(2, "acct_x", "reserve", -10, "req_1")])
        balances = asyncio.create_task(store.balances())
        topups = asyncio.create_task(store.ledger_entries(kinds=("topup",), after_id=0))
        await asyncio.sleep(STILL_WAITING)
        assert not balances.done() and not topups.done()
        await slow.commit()
    assert await balances == ({"acct_x": 40}, 2)
    assert [(i, e.amount_nanousd) for i, e in await topups] == [(1, 50)]


async def test_topups_take_turns(postgres_store: SQLStore) -> None:
    store = postgres_store
    await store.insert_account(AccountRecord("acct_x", "x", T0))
    async with store.engine.connect() as slow:
        await slow.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _TOPUP_LOCK})
        second = asyncio.create_task(store.topup("acct_x", 7))
        await asyncio.sleep(STILL_WAITING)
        assert not second.done()
        await slow.commit()
    assert await second == 7


async def test_readers_do_not_wait_for_each_other(postgres_store: SQLStore) -> None:
    async with postgres_store.engine.connect() as reader:
        await reader.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _TOPUP_LOCK})
        assert await asyncio.wait_for(postgres_store.balances(), 5) == ({}, 0)
        await reader.rollback()
