"""The SQLite batch statements: every row once, from a small set of statement sizes."""

from __future__ import annotations

from datetime import UTC, datetime

from tollway.store import LedgerEntry, SQLStore, UsageRecord
from tollway.store.rows import SQLITE_ROWS_PER_STATEMENT, sqlite_chunks

SIZES = {SQLITE_ROWS_PER_STATEMENT >> i for i in range(11)}


def test_batches_of_every_size_are_cut_into_statements_of_eleven_sizes_at_most() -> None:
    seen: set[int] = set()
    for count in range(3 * SQLITE_ROWS_PER_STATEMENT + 7):
        chunks = sqlite_chunks(count)
        covered = [i for start, size in chunks for i in range(start, start + size)]
        assert covered == list(range(count))  # every row once, in order
        assert len(chunks) <= count // SQLITE_ROWS_PER_STATEMENT + 10
        seen.update(size for _, size in chunks)
    assert seen == SIZES  # so sqlite3's statement cache holds eleven statements per table, not one per batch


async def test_a_batch_cut_into_statements_stores_every_row_once(store: SQLStore) -> None:
    at = datetime(2026, 11, 25, tzinfo=UTC)
    rows = [UsageRecord(f"req_{i}", at, None, "messages", "m", None, None, False, 200, None) for i in range(2345)]
    entries = [LedgerEntry(1, "key_a", "topup", 1, None) for _ in range(1031)]
    await store.insert_usage(rows, entries)
    await store.insert_usage(rows[:700], [])  # a batch retried: nothing doubles
    stored = await store.usage_rows(limit=10_000)
    assert sorted(r.request_id for r in stored) == sorted(r.request_id for r in rows)
    balances, _ = await store.balances()
    assert balances["key_a"] == 1031
