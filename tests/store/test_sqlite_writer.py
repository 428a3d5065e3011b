"""SQLite's usage writer: batches inserted on the event loop a slice at a time, with the loop free between
slices; the write lock and the commit on its own thread; a refused or cancelled batch leaves nothing behind and
the next one goes in; another writer holding the lock past the timeout is an outage (`StoreUnavailable`)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.store.test_sql_store import T0, usage
from tollway.errors import ConfigError
from tollway.store import LedgerEntry, SQLStore, UsageRecord, open_store, sqlite_writer
from tollway.store.engine import StoreUnavailable, unreachable


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[SQLStore, Path]]:
    path = tmp_path / "tollway.db"
    store = open_store(f"sqlite:///{path}")
    await store.migrate()
    yield store, path
    await store.close()


def rows(n: int, prefix: str = "req") -> list[UsageRecord]:
    return [usage(f"{prefix}_{i:05}", "key_a", "m", at=T0 + timedelta(milliseconds=i), inp=i) for i in range(n)]


def entries(n: int, prefix: str = "req") -> list[LedgerEntry]:
    return [LedgerEntry(i, "key_a", "reserve", -i, f"{prefix}_{i:05}") for i in range(n)]


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_a_large_batch_leaves_the_loop_free_between_slices(db: tuple[SQLStore, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, path = db
    seen: list[str] = []
    begin = sqlite_writer.SQLiteUsageWriter._begin

    def traced_begin(writer: sqlite_writer.SQLiteUsageWriter) -> sqlite3.Connection:
        conn = begin(writer)
        conn.set_trace_callback(lambda statement: seen.append(statement.split(" ", 1)[0]))
        return conn

    monkeypatch.setattr(sqlite_writer.SQLiteUsageWriter, "_begin", traced_begin)

    async def other_work() -> None:
        while True:
            seen.append("other")
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    batch = rows(2048)
    await store.insert_usage(batch, entries(2048))
    other.cancel()
    inserts = [i for i, what in enumerate(seen) if what == "INSERT"]
    assert len(inserts) == 2048 // sqlite_writer.USAGE_SLICE_ROWS + 2048 // sqlite_writer.LEDGER_SLICE_ROWS
    # Between any two statements, other work had its turn.
    assert all(b - a > 1 for a, b in itertools.pairwise(inserts)), seen
    assert count(path, "usage") == 2048 and count(path, "ledger") == 2048
    assert await store.usage_rows(limit=3) == list(reversed(batch))[:3]


async def test_a_refused_batch_leaves_nothing_and_the_next_goes_in(db: tuple[SQLStore, Path]) -> None:
    store, path = db
    # One value past SQLite's 64-bit integers, in the last slice: the slices before it were inserted already.
    batch = rows(100)
    batch[-1] = batch[-1]._replace(output_tokens=10**20)
    with pytest.raises(OverflowError):
        await store.insert_usage(batch, entries(100))
    assert count(path, "usage") == 0 and count(path, "ledger") == 0
    # The write lock was let go with the transaction: another writer need not wait for it.
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    await store.insert_usage(rows(100)[:-1], entries(99))
    assert count(path, "usage") == 99 and count(path, "ledger") == 99


@pytest.mark.parametrize("after", [0.0, 0.005, 0.05])
async def test_a_cancelled_batch_leaves_nothing_and_the_next_goes_in(db: tuple[SQLStore, Path],
                                                                      after: float) -> None:
    # Cancelled while the lock is being taken on the writer's thread, or between two slices on the loop.
    store, path = db
    write = asyncio.create_task(store.insert_usage(rows(20_000), entries(20_000)))
    await asyncio.sleep(after)
    assert not write.done()
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    await store.insert_usage(rows(10, "after"), entries(10, "after"))
    assert count(path, "usage") == 10 and count(path, "ledger") == 10


async def test_a_write_cancelled_while_waiting_for_the_lock_lets_it_go_once_taken(
        db: tuple[SQLStore, Path]) -> None:
    store, path = db
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    write = asyncio.create_task(store.insert_usage(rows(10), entries(10)))
    await asyncio.sleep(0.2)  # the writer's thread is in BEGIN, waiting for the lock
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    other.execute("COMMIT")  # the writer's BEGIN takes the lock now...
    other.close()
    writer = store._usage_writer
    assert writer is not None
    # ...and once its thread has done what was queued on it, lets it go, without a next write to do it (a flush
    # with nothing to write takes none).
    await asyncio.get_running_loop().run_in_executor(writer._thread, lambda: None)
    third = sqlite3.connect(path, timeout=0, isolation_level=None)
    third.execute("BEGIN IMMEDIATE")
    third.execute("ROLLBACK")
    third.close()
    assert count(path, "usage") == 0


async def test_another_writer_holding_the_lock_is_waited_for(db: tuple[SQLStore, Path]) -> None:
    store, path = db
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    write = asyncio.create_task(store.insert_usage(rows(10), entries(10)))
    await asyncio.sleep(0.3)
    assert not write.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(write, 5)
    assert count(path, "usage") == 10


async def test_a_lock_held_past_the_timeout_is_an_outage(db: tuple[SQLStore, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "BUSY_TIMEOUT", 0.2)  # taken when the writer's connection opens
    store, path = db
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.insert_usage(rows(10), entries(10))
        assert "locked" in caught.value.cause
    finally:
        other.execute("COMMIT")
        other.close()
    await store.insert_usage(rows(10), entries(10))
    assert count(path, "usage") == 10


def test_sqlite_errors_that_mean_the_database_cannot_be_written_now() -> None:
    def error(kind: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
        exc = kind(message)
        exc.sqlite_errorcode = code
        return exc

    assert unreachable(error(sqlite3.OperationalError, "database is locked", sqlite3.SQLITE_BUSY))
    assert unreachable(error(sqlite3.OperationalError, "disk I/O error", sqlite3.SQLITE_IOERR_WRITE))
    assert unreachable(error(sqlite3.OperationalError, "database or disk is full", sqlite3.SQLITE_FULL))
    assert not unreachable(error(sqlite3.IntegrityError, "NOT NULL constraint failed", sqlite3.SQLITE_CONSTRAINT))
    assert not unreachable(error(sqlite3.OperationalError, "no such table: usage", sqlite3.SQLITE_ERROR))


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///"])
def test_an_in_memory_database_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="in-memory"):
        open_store(url)
