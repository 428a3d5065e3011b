"""The SQLite batch statements: every row once, from a small set of statement sizes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tollway.store import LedgerEntry, SQLStore, UsageRecord
from tollway.store.rows import sqlite_chunks


@pytest.mark.parametrize("largest", [8, 32, 1024])
def test_batches_of_every_size_are_cut_into_statements_of_a_few_sizes(largest: int) -> None:
    sizes = {largest >> i for i in range(largest.bit_length())}
    seen: set[int] = set()
    for count in range(3 * largest + 7):
        chunks = sqlite_chunks(count, largest)
        covered = [i for start, size in chunks for i in range(start, start + size)]
        assert covered == list(range(count))  # every row once, in order
        assert len(chunks) <= count // largest + len(sizes) - 1
        seen.update(size for _, size in chunks)
    assert seen == sizes  # so sqlite3's statement cache holds a few statements per table, not one per batch


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
