"""The store's contract, on every backend (the ``store`` fixture runs each test on SQLite and on PostgreSQL):
keys, usage rows and their summary, the ledger. The first two tests are about SQLite files (a folder made,
WAL); the migrations on both backends are in test_migrations.py."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from tollway.store import KeyRecord, LedgerEntry, SQLStore, UsageRecord, UsageSummary, open_store
from tollway.store.sql import HEAD_REVISION

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)



def key(kid: str, name: str, *, created: datetime = T0, models: tuple[str, ...] | None = None) -> KeyRecord:
    return KeyRecord(id=kid, name=name, secret_hash=f"{kid:0>64}"[-64:], hint=f"tw-{kid[:4]}...abcd",
                     models=models, created_at=created)


def usage(rid: str, key_id: str | None, model: str | None, *, at: datetime = T0, status: int = 200,
          inp: int = 0, out: int = 0, c5m: int = 0, c1h: int = 0, read: int = 0) -> UsageRecord:
    return UsageRecord(request_id=rid, created_at=at, key_id=key_id, endpoint="messages", model=model,
                       upstream="mock", upstream_model=model, stream=False, status=status,
                       error_type=None if status < 400 else "api_error", input_tokens=inp, output_tokens=out,
                       cache_creation_input_tokens=c5m + c1h, cache_read_input_tokens=read,
                       cache_creation_5m=c5m, cache_creation_1h=c1h, latency_ms=12.5, ttfb_ms=3.0)


async def test_fresh_database_has_no_revision(tmp_path: Path) -> None:
    s = SQLStore.open(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'x.db'}")
    try:
        assert await s.revision() is None
        assert (tmp_path / "nested" / "dir").is_dir()  # open() makes the parent folder
    finally:
        await s.close()


async def test_migrate_twice_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    s = open_store(f"sqlite:///{path}")
    try:
        await s.migrate()
        assert await s.revision() == HEAD_REVISION
        await s.insert_key(key("key_a", "a"))
        await s.migrate()
        assert await s.revision() == HEAD_REVISION
        assert [k.id for k in await s.list_keys()] == ["key_a"]  # data survives the second migrate
    finally:
        await s.close()
    # A new process on the same file migrates again without harm.
    again = open_store(f"sqlite:///{path}")
    try:
        await again.migrate()
        assert await again.revision() == HEAD_REVISION
        assert [k.name for k in await again.list_keys()] == ["a"]
    finally:
        await again.close()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"keys", "usage", "alembic_version"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_insert_and_list_keys(store: SQLStore) -> None:
    b = key("key_b", "beta", created=T0 + timedelta(minutes=1), models=("claude-sonnet-*", "claude-haiku-4-5*"))
    a = key("key_a", "alpha", created=T0)
    empty = key("key_c", "none", created=T0 + timedelta(minutes=2), models=())
    for record in (b, a, empty):
        await store.insert_key(record)
    listed = await store.list_keys()
    assert listed == [a, b, empty]  # oldest first; every field, models and UTC datetimes round-trip
    assert listed[1].models == ("claude-sonnet-*", "claude-haiku-4-5*")
    assert listed[0].models is None
    assert listed[2].models == ()
    assert all(k.created_at.tzinfo is not None and k.active for k in listed)


async def test_duplicate_secret_hash_is_refused(store: SQLStore) -> None:
    await store.insert_key(key("key_a", "a"))
    clash = KeyRecord(id="key_other", name="o", secret_hash=key("key_a", "a").secret_hash, hint="h", models=None,
                      created_at=T0)
    with pytest.raises(IntegrityError):
        await store.insert_key(clash)


async def test_revoke_key(store: SQLStore) -> None:
    await store.insert_key(key("key_a", "a"))
    await store.insert_key(key("key_b", "b"))
    before = datetime.now(UTC)
    assert await store.revoke_key("key_a") is True
    after = datetime.now(UTC)
    keys = {k.id: k for k in await store.list_keys()}
    revoked_at = keys["key_a"].revoked_at
    assert revoked_at is not None and before <= revoked_at <= after
    assert keys["key_a"].active is False
    assert keys["key_b"].active is True
    assert await store.revoke_key("key_a") is False  # already revoked
    assert await store.revoke_key("key_missing") is False
    assert (await store.list_keys())[0].revoked_at == revoked_at  # a second revoke does not move the time


async def test_update_key_settings(store: SQLStore) -> None:
    await store.insert_key(key("key_a", "a"))
    await store.insert_key(key("key_b", "b"))
    mark = datetime.now(UTC)
    assert await store.update_key("key_a", {"rpm": 5, "models": ("claude-*",), "log_bodies": True}) is True
    a = await store.key("key_a")
    assert a is not None and (a.rpm, a.models, a.log_bodies) == (5, ("claude-*",), True)
    # The change moves updated_at, which is how every replica's key cache picks it up.
    assert [k.id for k in await store.keys_changed_since(mark)] == ["key_a"]
    assert await store.update_key("key_a", {"models": None, "rpm": None, "log_bodies": False}) is True
    a = await store.key("key_a")
    assert a is not None and (a.rpm, a.models, a.log_bodies) == (None, None, False)
    b = await store.key("key_b")
    assert b is not None and (b.rpm, b.log_bodies) == (None, False)  # the other key is untouched
    assert await store.update_key("key_missing", {"rpm": 1}) is False
    with pytest.raises(ValueError, match="not a key setting: name"):
        await store.update_key("key_a", {"name": "x"})


async def test_keys_changed_since(store: SQLStore) -> None:
    await store.insert_key(key("key_old", "old", created=T0))
    await store.insert_key(key("key_new", "new", created=T0 + timedelta(hours=1)))
    assert {k.id for k in await store.keys_changed_since(None)} == {"key_old", "key_new"}
    assert {k.id for k in await store.keys_changed_since(T0 + timedelta(minutes=30))} == {"key_new"}
    assert {k.id for k in await store.keys_changed_since(T0 + timedelta(hours=1))} == {"key_new"}  # inclusive
    assert await store.keys_changed_since(T0 + timedelta(hours=2)) == []
    # Revoking moves updated_at to now, so a refresh sees the old key again, revoked.
    mark = datetime.now(UTC) - timedelta(seconds=1)
    assert await store.revoke_key("key_old")
    changed = await store.keys_changed_since(mark)
    assert [(k.id, k.active) for k in changed] == [("key_old", False)]


async def test_key_by_hash(store: SQLStore) -> None:
    a = key("key_a", "a", models=("claude-*",))
    await store.insert_key(a)
    assert await store.key_by_hash(a.secret_hash) == a
    assert await store.key_by_hash("0" * 64) is None
    await store.revoke_key("key_a")
    found = await store.key_by_hash(a.secret_hash)
    assert found is not None and found.active is False  # revoked keys are still found; callers check active


async def test_insert_usage_and_rows(store: SQLStore) -> None:
    rows = [usage(f"req_{i}", "key_a", "claude-sonnet-4-6", at=T0 + timedelta(seconds=i), inp=i, out=2 * i)
            for i in range(5)]
    await store.insert_usage(rows[:3])
    await store.insert_usage(rows[3:])
    await store.insert_usage([])  # nothing to do, no error
    got = await store.usage_rows()
    assert got == list(reversed(rows))  # newest first, every field round-trips
    assert all(r.created_at.tzinfo is not None for r in got)
    assert await store.usage_rows(limit=2) == [rows[4], rows[3]]


async def test_insert_usage_skips_request_ids_already_stored(store: SQLStore) -> None:
    # A batch retried after a failure that came after its commit must neither fail nor double-count.
    first = usage("req_1", None, "m", inp=1)
    await store.insert_usage([first])
    await store.insert_usage([usage("req_2", None, "m", inp=2), usage("req_1", None, "m", inp=99)])
    rows = await store.usage_rows()
    assert sorted((r.request_id, r.input_tokens) for r in rows) == [("req_1", 1), ("req_2", 2)]
    assert (await store.usage_summary())[0].input_tokens == 3


async def test_usage_row_nullable_fields(store: SQLStore) -> None:
    row = UsageRecord(request_id="req_x", created_at=T0, key_id=None, endpoint="count_tokens", model=None,
                      upstream=None, upstream_model=None, stream=True, status=401, error_type="authentication_error")
    await store.insert_usage([row])
    assert await store.usage_rows() == [row]


@pytest.fixture
async def ledger(store: SQLStore) -> SQLStore:
    await store.insert_key(key("key_a", "alice", created=T0 - timedelta(days=1)))
    await store.insert_key(key("key_b", "bob", created=T0 - timedelta(days=1)))
    await store.insert_usage([
        usage("r1", "key_a", "claude-sonnet-4-6", at=T0, inp=10, out=20, c5m=1, c1h=2, read=3),
        usage("r2", "key_a", "claude-sonnet-4-6", at=T0 + timedelta(hours=1), inp=100, out=200, c5m=10, c1h=20,
              read=30),
        usage("r3", "key_a", "claude-sonnet-4-6", at=T0 + timedelta(hours=2), status=529),
        usage("r4", "key_a", "claude-haiku-4-5-20251001", at=T0 + timedelta(hours=3), inp=7, out=8, status=200),
        usage("r5", "key_b", "claude-sonnet-4-6", at=T0 + timedelta(hours=4), inp=1000, out=2000, status=400),
        usage("r6", None, None, at=T0 + timedelta(hours=5), status=401),
    ])
    return store


def by_group(rows: list[UsageSummary]) -> dict[tuple[str | None, str | None], UsageSummary]:
    out = {(r.key_id, r.model): r for r in rows}
    assert len(out) == len(rows), "one row per key and model"
    return out


async def test_usage_summary_groups_by_key_and_model(ledger: SQLStore) -> None:
    rows = by_group(await ledger.usage_summary())
    assert rows == {
        ("key_a", "claude-sonnet-4-6"): UsageSummary("key_a", "alice", "claude-sonnet-4-6", requests=3, errors=1,
                                                     input_tokens=110, output_tokens=220, cache_creation_5m=11,
                                                     cache_creation_1h=22, cache_read_input_tokens=33),
        ("key_a", "claude-haiku-4-5-20251001"): UsageSummary("key_a", "alice", "claude-haiku-4-5-20251001", 1, 0,
                                                             7, 8, 0, 0, 0),
        ("key_b", "claude-sonnet-4-6"): UsageSummary("key_b", "bob", "claude-sonnet-4-6", 1, 1, 1000, 2000, 0, 0, 0),
        (None, None): UsageSummary(None, None, None, 1, 1, 0, 0, 0, 0, 0),
    }


@pytest.mark.parametrize("which", ["key_a", "alice"])
async def test_usage_summary_key_filter_by_id_or_name(ledger: SQLStore, which: str) -> None:
    rows = by_group(await ledger.usage_summary(key=which))
    assert set(rows) == {("key_a", "claude-sonnet-4-6"), ("key_a", "claude-haiku-4-5-20251001")}
    assert rows["key_a", "claude-sonnet-4-6"].requests == 3


async def test_usage_summary_unknown_key(ledger: SQLStore) -> None:
    assert await ledger.usage_summary(key="nobody") == []


async def test_usage_summary_since(ledger: SQLStore) -> None:
    rows = by_group(await ledger.usage_summary(since=T0 + timedelta(hours=1)))  # r2 onwards, inclusive
    assert rows["key_a", "claude-sonnet-4-6"] == UsageSummary("key_a", "alice", "claude-sonnet-4-6", 2, 1, 100, 200,
                                                              10, 20, 30)
    assert set(rows) == {("key_a", "claude-sonnet-4-6"), ("key_a", "claude-haiku-4-5-20251001"),
                         ("key_b", "claude-sonnet-4-6"), (None, None)}
    later = by_group(await ledger.usage_summary(since=T0 + timedelta(hours=3, minutes=30)))
    assert set(later) == {("key_b", "claude-sonnet-4-6"), (None, None)}
    assert await ledger.usage_summary(since=T0 + timedelta(days=1)) == []


async def test_usage_summary_key_and_since(ledger: SQLStore) -> None:
    rows = await ledger.usage_summary(key="bob", since=T0 + timedelta(hours=4))
    assert rows == [UsageSummary("key_b", "bob", "claude-sonnet-4-6", 1, 1, 1000, 2000, 0, 0, 0)]
    assert await ledger.usage_summary(key="bob", since=T0 + timedelta(hours=4, seconds=1)) == []


async def test_usage_summary_of_a_deleted_key_keeps_its_id(ledger: SQLStore) -> None:
    await ledger.insert_usage([usage("r7", "key_gone", "claude-sonnet-4-6", inp=5)])
    rows = by_group(await ledger.usage_summary(key="key_gone"))
    assert rows == {("key_gone", "claude-sonnet-4-6"): UsageSummary("key_gone", None, "claude-sonnet-4-6", 1, 0,
                                                                    5, 0, 0, 0, 0)}


async def test_newest_ledger_entries_come_first_and_limited(store: SQLStore) -> None:
    now = 1_764_000_000_000_000
    await store.insert_usage([], [LedgerEntry(now, "key_a", "reserve", -i, f"req_{i}") for i in range(1, 6)]
                             + [LedgerEntry(now, "key_b", "reserve", -9, "req_9")])
    newest = await store.ledger_entries(owner="key_a", newest=2)
    assert [e.request_id for _, e in newest] == ["req_5", "req_4"]
    assert [e.request_id for _, e in await store.ledger_entries(owner="key_a")][:2] == ["req_1", "req_2"]


async def test_a_request_is_closed_once_per_owner(store: SQLStore) -> None:
    # A start releases a reserve whose process still drains (a rolling restart); that process's settle,
    # arriving after, must not close the same request a second time.
    at = 1_764_000_000_000_000
    await store.insert_usage([], [LedgerEntry(at, "key_a", "reserve", -100, "req_1"),
                                  LedgerEntry(at, "key_a", "release", 100, "req_1")])
    await store.insert_usage([], [LedgerEntry(at, "key_a", "settle", 60, "req_1")])
    balances, _ = await store.balances()
    assert balances["key_a"] == 0
    assert [e.kind for _, e in await store.ledger_entries(owner="key_a")] == ["reserve", "release"]


async def test_taking_money_back_does_not_make_an_owner_prepaid(store: SQLStore) -> None:
    await store.insert_key(key("key_p", "p"))
    assert await store.topup("key_p", -5) == -5
    found = await store.key("key_p")
    assert found is not None and not found.budget.prepaid
    assert await store.topup("key_p", 10) == 5
    found = await store.key("key_p")
    assert found is not None and found.budget.prepaid


async def test_the_top_ups_after_an_entry_are_read_through_an_index(store: SQLStore) -> None:
    # Every replica reads them at each refresh. Through the primary key alone that read went over every request
    # entry since the last top-up (two a request), for as long as no top-up came: 62 ms a read at a million.
    query = "SELECT id FROM ledger WHERE kind IN ('topup') AND id > 5 ORDER BY id"
    async with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            plan = [str(row[-1]) for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}")]
        else:
            # An empty table is cheapest to read whole: the question is which index is there to take.
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = [str(row[0]) for row in await conn.exec_driver_sql(f"EXPLAIN {query}")]
    assert any("ix_ledger_kind_id" in line for line in plan), plan
