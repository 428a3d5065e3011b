"""UsageLedger: rows are queued, written in batches, kept when a write fails, and flushed on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from tollway.accounting.ledger import UsageLedger
from tollway.accounting.refresher import Outage
from tollway.store import LedgerEntry, SQLStore, UsageRecord
from tollway.store.schema import metadata
from tollway.store.sql import StoreUnavailable

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class RecordingStore(SQLStore):
    """A real SQLite store that counts its batch writes and can be told to fail or to wait."""

    def __init__(self, url: str) -> None:
        super().__init__(SQLStore.open(url).engine)
        self.batches: list[int] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.writing = asyncio.Event()
        self.calls = 0
        self.refuse: set[str] = set()
        """Request ids whose rows this store refuses, as a database refuses a value it cannot hold."""

    async def insert_usage(self, records: Sequence[UsageRecord], entries: Sequence[LedgerEntry] = ()) -> None:
        self.calls += 1
        self.writing.set()
        if self.refuse.intersection(r.request_id for r in records):
            raise ValueError("value out of range")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("disk on fire")
        self.batches.append(len(records))
        await super().insert_usage(records, entries)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RecordingStore]:
    s = RecordingStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    await s.migrate()
    yield s
    await s.close()


def row(i: int) -> UsageRecord:
    return UsageRecord(request_id=f"req_{i:04d}", created_at=T0 + timedelta(seconds=i), key_id="key_a",
                       endpoint="messages", model="claude-sonnet-4-6", upstream="mock", upstream_model=None,
                       stream=False, status=200, error_type=None, input_tokens=i, output_tokens=1)


async def stored_ids(store: SQLStore) -> list[str]:
    return sorted(r.request_id for r in await store.usage_rows(limit=100_000))


async def test_record_queues_and_flush_writes_one_batch(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    for i in range(5):
        ledger.record(row(i))
    assert ledger.pending == 5
    assert await stored_ids(store) == []  # record() never writes
    await ledger.flush()
    assert ledger.pending == 0
    assert store.batches == [5]  # one write for the lot
    assert await stored_ids(store) == [f"req_{i:04d}" for i in range(5)]
    await ledger.flush()  # nothing queued: no write at all
    assert store.batches == [5]


async def test_rows_recorded_after_a_flush_go_in_the_next(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.record(row(1))
    await ledger.flush()
    ledger.record(row(2))
    ledger.record(row(3))
    await ledger.flush()
    assert store.batches == [1, 2]
    assert await stored_ids(store) == ["req_0001", "req_0002", "req_0003"]


async def test_background_loop_flushes(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=0.01)
    await ledger.start()
    try:
        for i in range(3):
            ledger.record(row(i))
        for _ in range(500):
            if len(await stored_ids(store)) == 3:
                break
            await asyncio.sleep(0.01)
        assert await stored_ids(store) == ["req_0000", "req_0001", "req_0002"]
        assert ledger.pending == 0
    finally:
        await ledger.close()


async def test_close_flushes_the_rest_without_waiting_for_the_interval(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    await ledger.start()
    for i in range(4):
        ledger.record(row(i))
    await asyncio.wait_for(ledger.close(), timeout=10)
    assert ledger.pending == 0
    assert await stored_ids(store) == [f"req_{i:04d}" for i in range(4)]


async def test_close_without_start_flushes(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.record(row(7))
    await ledger.close()
    assert await stored_ids(store) == ["req_0007"]


async def test_failed_write_keeps_rows_for_the_next_flush(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    for i in range(3):
        ledger.record(row(i))
    store.fail = True
    await ledger.flush()  # logged, not raised
    assert ledger.pending == 3
    assert await stored_ids(store) == []
    ledger.record(row(3))
    assert ledger.pending == 4
    store.fail = False
    await ledger.flush()
    assert ledger.pending == 0
    assert store.batches == [4]
    assert await stored_ids(store) == ["req_0000", "req_0001", "req_0002", "req_0003"]


async def test_rows_kept_in_order_behind_a_failure(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.record(row(1))
    store.fail = True
    store.gate = asyncio.Event()
    flushing = asyncio.create_task(ledger.flush())
    await store.writing.wait()
    ledger.record(row(2))  # arrives while the failing write is in flight
    store.gate.set()
    await flushing
    assert ledger.pending == 2
    store.fail, store.gate = False, None
    captured: list[list[str]] = []
    real = SQLStore.insert_usage

    async def capture(records: Sequence[UsageRecord], entries: Sequence[LedgerEntry] = ()) -> None:
        captured.append([r.request_id for r in records])
        await real(store, records, entries)

    store.insert_usage = capture  # type: ignore[method-assign]
    await ledger.flush()
    assert captured == [["req_0001", "req_0002"]]  # the failed batch goes back in front


async def test_real_database_failure_keeps_rows(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.record(row(1))
    ledger.record(row(2))
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE usage"))
    await ledger.flush()  # "no such table": logged, rows kept
    assert ledger.pending == 2
    async with store.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await ledger.flush()
    assert ledger.pending == 0
    assert await stored_ids(store) == ["req_0001", "req_0002"]


async def test_close_while_a_write_is_in_flight_loses_nothing(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=0.01)
    store.gate = asyncio.Event()
    await ledger.start()
    ledger.record(row(1))
    await asyncio.wait_for(store.writing.wait(), timeout=10)  # the loop's write has started and is waiting
    ledger.record(row(2))
    closing = asyncio.create_task(ledger.close())
    await asyncio.sleep(0.05)
    store.gate.set()
    await asyncio.wait_for(closing, timeout=10)
    assert ledger.pending == 0
    assert await stored_ids(store) == ["req_0001", "req_0002"]


async def test_retried_batch_is_not_double_counted(store: RecordingStore) -> None:
    # A write that committed but then reported failure is retried; the store skips rows it already has.
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.record(row(1))
    await store.insert_usage([row(1)])
    await ledger.flush()
    assert ledger.pending == 0
    rows = await store.usage_rows()
    assert [r.request_id for r in rows] == ["req_0001"]


async def test_queue_limit_drops_and_counts(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.MAX_PENDING = 3
    for i in range(5):
        ledger.record(row(i))
    assert ledger.pending == 3
    assert ledger.dropped == 2
    await ledger.flush()
    assert await stored_ids(store) == ["req_0000", "req_0001", "req_0002"]
    ledger.record(row(9))  # room again after the flush
    assert ledger.pending == 1
    assert ledger.dropped == 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def unavailable() -> StoreUnavailable:
    return StoreUnavailable(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"))


async def test_an_unreachable_database_is_logged_once_then_each_minute_then_its_end(
        store: RecordingStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tollway.ledger")
    clock = Clock()
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.outage = Outage(logging.getLogger("tollway.ledger"), clock)
    real = store.insert_usage

    async def down(records: Sequence[UsageRecord], entries: Sequence[LedgerEntry] = ()) -> None:
        raise unavailable()

    store.insert_usage = down  # type: ignore[method-assign]
    ledger.record(row(1))
    for _ in range(20):  # a flush every 0.2 s for 4 s: one line, no traceback
        await ledger.flush()
        clock.now += 0.2
    (said,) = caplog.records
    assert said.levelno == logging.WARNING and said.exc_info is None
    assert said.getMessage() == ("writing 1 usage rows and 0 ledger entries failed; keeping them in memory for the "
                                 "next flush (up to 200000 rows): the database is unreachable (ConnectionRefusedError: "
                                 "[Errno 111] Connect call failed ('127.0.0.1', 5432))")
    health = ledger.health()
    assert health["writing"] is False and health["failing_for_s"] == 4.0 and health["failed_writes"] == 20
    assert health["pending_rows"] == 1 and "unreachable" in str(health["last_error"])
    clock.now += 60
    ledger.record(row(2))
    await ledger.flush()  # a minute on: said again, with how long and how many tries
    assert caplog.records[-1].getMessage().startswith(
        "writing 2 usage rows and 0 ledger entries failed; keeping them in memory for the next flush (up to "
        "200000 rows), still, after 64 s and 21 tries: the database is unreachable")
    store.insert_usage = real  # type: ignore[method-assign]
    await ledger.flush()
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == ("usage written to the database (2 rows, 0 ledger entries) again after "
                                               "64.0 s and 21 failed tries")
    assert len(caplog.records) == 3
    assert ledger.health()["writing"] is True and ledger.health()["failing_for_s"] == 0.0
    assert await stored_ids(store) == ["req_0001", "req_0002"]


async def test_any_other_write_failure_is_logged_with_its_traceback(store: RecordingStore,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.record(row(1))
    store.fail = True
    await ledger.flush()
    (said,) = [r for r in caplog.records if r.name == "tollway.ledger"]
    assert said.levelno == logging.ERROR and said.exc_info is not None
    assert "RuntimeError: disk on fire" in caplog.text
    assert ledger.health()["last_error"] == "RuntimeError: disk on fire"


async def test_close_keeps_trying_while_the_database_is_away(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=0.01)
    await ledger.start()
    ledger.record(row(1))
    store.fail = True  # a database restarting as the gateway stops

    async def back_soon() -> None:
        await asyncio.sleep(0.3)
        store.fail = False

    returns = asyncio.create_task(back_soon())
    await asyncio.wait_for(ledger.close(), timeout=10)
    await returns
    assert ledger.pending == 0
    assert await stored_ids(store) == ["req_0001"]


async def test_close_gives_up_after_its_patience_and_says_what_is_lost(
        store: RecordingStore, caplog: pytest.LogCaptureFixture) -> None:
    ledger = UsageLedger(store, flush_interval=0.01)
    ledger.CLOSE_PATIENCE = 0.2
    ledger.record(row(1))
    ledger.entry(LedgerEntry(1, "key_a", "reserve", -5, "req_0001"))
    store.fail = True
    await asyncio.wait_for(ledger.close(), timeout=10)
    assert len(store.batches) == 0 and ledger.pending == 2
    assert caplog.records[-1].getMessage() == ("stopping with 1 usage rows and 1 ledger entries not written "
                                               "(RuntimeError: disk on fire): they are lost")


def entry(i: int) -> LedgerEntry:
    return LedgerEntry(1_000_000 + i, "key_a", "reserve", -10, f"req_{i:04d}", None)


async def test_a_request_the_database_refuses_is_held_apart_and_the_rest_is_written(
        store: RecordingStore, caplog: pytest.LogCaptureFixture) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    for i in range(10):
        # The real refusal: SQLite cannot hold an integer past 64 bits (an upstream's absurd token count, priced).
        ledger.record(row(i)._replace(cost_nanousd=2**64) if i == 6 else row(i))
        ledger.entry(entry(i))
    await ledger.flush()
    good = [f"req_{i:04d}" for i in range(10) if i != 6]
    assert await stored_ids(store) == good
    balances, _ = await store.balances()
    assert balances["key_a"] == -90  # the nine written requests' entries, not the held one's
    assert ledger.pending == 0 and ledger.health()["held_requests"] == 1
    assert ledger.health()["writing"] is True
    (said,) = [r for r in caplog.records if "refused by the database" in r.getMessage()]
    assert "req_0006" in said.getMessage() and said.levelno == logging.ERROR
    ledger.record(row(10))
    await ledger.flush()  # the held request fails alone again, and holds nothing else back
    assert await stored_ids(store) == [*good, "req_0010"]
    assert ledger.health()["held_requests"] == 1


async def test_a_held_request_is_written_once_the_database_takes_it(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    store.refuse = {"req_0002"}
    for i in range(4):
        ledger.record(row(i))
        ledger.entry(entry(i))
    await ledger.flush()
    assert await stored_ids(store) == ["req_0000", "req_0001", "req_0003"]
    assert ledger.health()["held_requests"] == 1
    store.refuse = set()
    await ledger.flush()
    assert await stored_ids(store) == ["req_0000", "req_0001", "req_0002", "req_0003"]
    assert ledger.health()["held_requests"] == 0
    balances, _ = await store.balances()
    assert balances["key_a"] == -40  # its entry went in with its row


async def test_a_refused_request_alone_in_its_batch_is_kept_not_held(store: RecordingStore) -> None:
    # With nothing else in the batch there is no telling a bad row from a database that takes nothing.
    ledger = UsageLedger(store, flush_interval=3600)
    store.refuse = {"req_0001"}
    ledger.record(row(1))
    await ledger.flush()
    assert ledger.pending == 1 and ledger.health()["held_requests"] == 0
    ledger.record(row(2))
    await ledger.flush()
    assert await stored_ids(store) == ["req_0002"]
    assert ledger.pending == 0 and ledger.health()["held_requests"] == 1


async def test_a_database_that_takes_nothing_keeps_the_batch_whole_after_a_bounded_search(
        store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    for i in range(500):
        ledger.record(row(i))
    store.fail = True
    await ledger.flush()
    assert store.calls == 1 + UsageLedger.SPLIT_TRIES
    assert ledger.pending == 500 and ledger.health()["held_requests"] == 0
    store.fail = False
    await ledger.flush()
    assert len(await stored_ids(store)) == 500


async def test_requests_a_split_did_not_reach_wait_for_the_next_flush(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    # Three tries after the whole batch: 0-3 written, 4-7 refused, 4-5 written; 6-7 not reached.
    ledger.SPLIT_TRIES = 3
    store.refuse = {"req_0007"}
    for i in range(8):
        ledger.record(row(i))
    await ledger.flush()
    assert await stored_ids(store) == [f"req_{i:04d}" for i in range(6)]
    assert ledger.pending == 2 and ledger.health()["held_requests"] == 0
    await ledger.flush()
    assert await stored_ids(store) == [f"req_{i:04d}" for i in range(7)]
    assert ledger.health()["held_requests"] == 1


async def test_held_requests_are_tried_a_few_at_a_flush_in_turn(store: RecordingStore) -> None:
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.HELD_TRIES = 2
    store.refuse = {"req_0001", "req_0002", "req_0003"}
    for i in range(1, 5):
        ledger.record(row(i))
    await ledger.flush()
    assert ledger.health()["held_requests"] == 3
    store.refuse = {"req_0001", "req_0002"}  # req_0003 would go in now, once its turn comes
    store.calls = 0
    await ledger.flush()  # nothing queued: only the held, two of them, both still refused
    assert store.calls == 2 and ledger.health()["held_requests"] == 3
    await ledger.flush()  # req_0003's turn
    assert ledger.health()["held_requests"] == 2
    assert await stored_ids(store) == ["req_0003", "req_0004"]
