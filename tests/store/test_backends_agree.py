"""SQLite and PostgreSQL give the same answers for the same data: every report, balance and listing, value for
value and in the same order, with plain ints where PostgreSQL's sums are numeric.

The session's PostgreSQL database has an ICU collation (text not in byte order) and a time zone 14 hours from
UTC, so a query that leaned on either would answer differently here.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tollway.store import AccountRecord, Budget, KeyRecord, LedgerEntry, SQLStore, UsageRecord
from tollway.store.sql import SUMMARY_GROUPS

MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)
BIG = 3_000_000_000  # over 2**31 nano-dollars ($3): sums leave 32 bits


def usage(rid: str, key_id: str | None, model: str | None, at: datetime, *, upstream: str | None = "anthropic",
          status: int = 200, tokens: int = 0, cost: int | None = None) -> UsageRecord:
    return UsageRecord(request_id=rid, created_at=at, key_id=key_id, endpoint="messages", model=model,
                       upstream=upstream, upstream_model=model, stream=status == 200, status=status,
                       error_type=None if status < 400 else "api_error", input_tokens=tokens,
                       output_tokens=2 * tokens, cache_creation_input_tokens=3, cache_read_input_tokens=tokens // 2,
                       cache_creation_5m=1, cache_creation_1h=2, latency_ms=10.25,
                       ttfb_ms=None if status >= 400 else 1.5, tries=None, cost_nanousd=cost)


ROWS = [
    # Either side of midnight UTC: in the database's own zone both are the afternoon of 2 March.
    usage("r01", "key_a", "claude-sonnet-4-6", MIDNIGHT - timedelta(microseconds=1), tokens=10, cost=BIG),
    usage("r02", "key_a", "claude-sonnet-4-6", MIDNIGHT, tokens=20, cost=BIG),
    usage("r03", "key_a", "GLM-4.6", MIDNIGHT + timedelta(hours=10), upstream="Backup", tokens=5, cost=7),
    usage("r04", "key_b", "claude-haiku-4-5", MIDNIGHT - timedelta(hours=9, minutes=30), status=529),
    usage("r05", "key_b", None, MIDNIGHT + timedelta(days=1), upstream=None, status=400),
    usage("r06", "key_gone", "claude-sonnet-4-6", MIDNIGHT + timedelta(hours=1), upstream=None, tokens=1, cost=BIG),
    usage("r07", None, None, MIDNIGHT - timedelta(days=1), upstream=None, status=401),
    usage("r08", "key_c", "claude-sonnet-4-6", MIDNIGHT + timedelta(hours=23, minutes=59), upstream="openrouter",
          tokens=1000, cost=None),
    usage("r09", "key_c", "claude-sonnet-4-6", MIDNIGHT + timedelta(hours=2), upstream="anthropic", tokens=3, cost=4),
]
AT = int(MIDNIGHT.timestamp() * 1_000_000)
ENTRIES = [
    LedgerEntry(AT, "acct_x", "topup", 10 * BIG, None, "first"),
    LedgerEntry(AT + 1, "key_a", "topup", 2 * BIG),
    LedgerEntry(AT + 2, "acct_x", "reserve", -BIG, "r01"),
    LedgerEntry(AT + 2, "key_a", "reserve", -BIG, "r01"),
    LedgerEntry(AT + 3, "acct_x", "settle", BIG - 5, "r01"),
    LedgerEntry(AT + 3, "key_a", "settle", BIG - 5, "r01"),
    LedgerEntry(AT + 4, "acct_x", "reserve", -BIG, "r02"),  # cut off: open
    LedgerEntry(AT + 5, "key_b", "reserve", -9, "r04"),
    LedgerEntry(AT + 6, "key_b", "release", 9, "r04"),
    LedgerEntry(AT + 7, "key_c", "reserve", -4, "r09"),  # open
]


def key(kid: str, name: str, minute: int, account: str | None = None) -> KeyRecord:
    return KeyRecord(id=kid, name=name, secret_hash=kid.rjust(64, "0"), hint="tw-x...abcd", models=None,
                     created_at=MIDNIGHT + timedelta(minutes=minute), account_id=account)


async def fill(store: SQLStore) -> None:
    await store.insert_account(AccountRecord("acct_x", "Xylo", MIDNIGHT, Budget(prepaid=True)))
    await store.insert_account(AccountRecord("acct_y", "alpha", MIDNIGHT))  # same time: the id decides the order
    await store.insert_key(key("key_b", "Bob", 0, "acct_x"))
    await store.insert_key(key("key_a", "alice", 0, "acct_x"))  # same time as key_b, and written after it
    await store.insert_key(key("key_c", "carol", 5))
    # Two batches, the second retried with rows and entries already stored (top-ups, which have no request id
    # to tell them by, are written once: by topup(), never in a batch).
    await store.insert_usage(ROWS[:5], ENTRIES[2:6])
    await store.insert_usage(ROWS, ENTRIES)
    await store.set_budget("key_c", {"cap_nanousd": BIG, "cap_period": "month"})
    await store.revoke_key("key_b")


async def answers(store: SQLStore) -> dict[str, Any]:
    """Everything the store reports on the filled data, except times it took from the clock."""
    out: dict[str, Any] = {}
    for n in range(len(SUMMARY_GROUPS) + 1):
        for by in itertools.combinations(SUMMARY_GROUPS, n):
            out[f"summary by {by}"] = await store.usage_summary(by=by)
    for who in ("alice", "key_b", "Bob", "key_gone", "nobody"):
        out[f"summary of {who}"] = await store.usage_summary(key=who, by=("key", "model", "day"))
    out["summary since"] = await store.usage_summary(since=MIDNIGHT, by=("upstream", "day"))
    # Ids are compared by rank: PostgreSQL's sequence moves on for rows a retried batch skips, so its ids have
    # gaps, while they keep the same order.
    ids = [i for i, _ in await store.ledger_entries()]
    rank = {i: n for n, i in enumerate(ids, 1)}

    def ranked(entries: list[tuple[int, LedgerEntry]]) -> list[tuple[int, LedgerEntry]]:
        return [(rank[i], e) for i, e in entries]

    balances, last = await store.balances()
    out["balances"] = balances, rank[last]
    out["spend"] = await store.spend_by_key(MIDNIGHT)
    out["open"] = await store.open_reserves()
    out["ledger"] = ranked(await store.ledger_entries())
    out["newest"] = ranked(await store.ledger_entries(owner="acct_x", newest=2))
    out["kinds"] = ranked(await store.ledger_entries(kinds=("settle", "release"), after_id=ids[2]))
    out["rows"] = await store.usage_rows()
    keys = await store.list_keys()
    out["keys"] = [(k.id, k.name, k.account_id, k.budget, k.active, k.created_at) for k in keys]
    out["accounts"] = await store.list_accounts()
    out["by name"] = await store.account("Xylo")
    out["by hash"] = await store.key_by_hash("key_a".rjust(64, "0"))
    return out


@pytest.fixture
async def both(sqlite_store: SQLStore, postgres_store: SQLStore) -> tuple[dict[str, Any], dict[str, Any]]:
    for s in (sqlite_store, postgres_store):
        await fill(s)
    return await answers(sqlite_store), await answers(postgres_store)


def test_every_answer_is_the_same(both: tuple[dict[str, Any], dict[str, Any]]) -> None:
    lite, pg = both
    assert lite.keys() == pg.keys()
    for name in lite:
        assert lite[name] == pg[name], name


def test_sums_are_ints_on_both(both: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for answers_ in both:
        for row in answers_["summary by ()"] + answers_["summary by ('key', 'model', 'upstream', 'day')"]:
            values = (row.requests, row.errors, row.input_tokens, row.output_tokens, row.cache_creation_5m,
                      row.cache_creation_1h, row.cache_read_input_tokens)
            assert all(type(v) is int for v in values)
            assert row.cost_nanousd is None or type(row.cost_nanousd) is int
        balances, last = answers_["balances"]
        assert type(last) is int and all(type(v) is int for v in balances.values())
        assert all(type(v) is int for v in answers_["spend"].values())


@pytest.mark.parametrize("backend", [0, 1], ids=["sqlite", "postgres"])
def test_the_answers_are_right_not_only_alike(both: tuple[dict[str, Any], dict[str, Any]], backend: int) -> None:
    got = both[backend]
    [total] = got["summary by ()"]
    assert (total.requests, total.errors, total.cost_nanousd) == (9, 3, 3 * BIG + 11)
    # UTC days, whatever the database's zone; NULL first and text in byte order, whatever its collation.
    assert [(r.day, r.requests) for r in got["summary by ('day',)"]] == [
        ("2026-03-01", 3), ("2026-03-02", 5), ("2026-03-03", 1)]
    assert [r.model for r in got["summary by ('model',)"]] == [None, "GLM-4.6", "claude-haiku-4-5",
                                                                 "claude-sonnet-4-6"]
    assert [r.upstream for r in got["summary by ('upstream',)"]] == [None, "Backup", "anthropic", "openrouter"]
    assert [(r.key_id, r.key_name) for r in got["summary by ('key',)"]] == [
        (None, None), ("key_a", "alice"), ("key_b", "Bob"), ("key_c", "carol"), ("key_gone", None)]
    assert got["balances"] == ({"acct_x": 9 * BIG - 5, "key_a": 2 * BIG - 5, "key_b": 0, "key_c": -4}, 10)
    assert got["spend"] == {"key_a": BIG + 7, "key_c": 4, "key_gone": BIG}
    assert [(e.owner, e.request_id) for e in got["open"]] == [("acct_x", "r02"), ("key_c", "r09")]
    assert [k[0] for k in got["keys"]] == ["key_a", "key_b", "key_c"]
    assert [(n, e.request_id) for n, e in got["kinds"]] == [(4, "r01"), (9, "r04")]
    assert [a.id for a in got["accounts"]] == ["acct_x", "acct_y"]


async def test_topups_answer_the_same_balance(sqlite_store: SQLStore, postgres_store: SQLStore) -> None:
    results = []
    for s in (sqlite_store, postgres_store):
        await fill(s)
        results.append((await s.topup("acct_x", BIG, "more"), await s.topup("key_c", -1), await s.topup("acct_zz", 1)))
    assert results[0] == results[1] == (10 * BIG - 5, -5, None)
