"""Rows to records and records to rows, and the bulk-insert statements each database takes best."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import String

from tollway.store import schema
from tollway.store.records import AccountRecord, Budget, KeyRecord, LedgerEntry


def sqlite_chunks(count: int, largest: int) -> list[tuple[int, int]]:
    """(start, size) of the statements that insert ``count`` rows: full chunks of ``largest`` (a power of two)
    rows, then the rest as powers of two. The sizes come from a small set, so the statements do too: sqlite3
    keeps each compiled statement it has run (128 per connection), and a statement of a thousand rows held about
    a megabyte, so one statement per batch size grew the process by hundreds of megabytes under load."""
    chunks, start = [], 0
    size = largest
    while start < count:
        while size > count - start:
            size //= 2
        chunks.append((start, size))
        start += size
    return chunks


def sqlite_time(value: datetime) -> str:
    # The text form SQLAlchemy's DateTime type reads back on SQLite (naive, UTC). isoformat is several
    # times cheaper than strftime, and this runs for every row and ledger entry written.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


@functools.cache
def sqlite_insert_sql(table: str, fields: tuple[str, ...], rows: int) -> str:
    one = "(" + ", ".join("?" * len(fields)) + ")"
    # OR IGNORE: a batch retried after a failure that came after its commit must not fail on its own rows.
    return f"INSERT OR IGNORE INTO {table} ({', '.join(fields)}) VALUES " + ", ".join([one] * rows)


@functools.cache
def pg_unnest_sql(table: Table, fields: tuple[str, ...], unique: tuple[str, ...]) -> str:
    # Imported here: PostgreSQL's dialect module takes 50 ms to load, which a SQLite start does without.
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays = ", ".join(f"${i}::{table.c[f].type.compile(dialect=dialect)}[]" for i, f in enumerate(fields, 1))
    # DO NOTHING on the unique key: a batch retried after a failure that came after its commit must not fail
    # on its own rows.
    target = f"({', '.join(unique)}) " if unique else ""
    return (f"INSERT INTO {table.name} ({', '.join(fields)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT {target}DO NOTHING")


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything Tollway stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def order_as_sqlite(column: Any) -> ColumnElement[Any]:
    if isinstance(column.type, String):
        column = column.collate("C")
    return column.nulls_first()  # type: ignore[no-any-return]


def to_budget(row: Any) -> Budget:
    return Budget(prepaid=bool(row.prepaid), cap_nanousd=row.cap_nanousd, cap_period=row.cap_period)


def to_key(row: Any) -> KeyRecord:
    created = aware(row.created_at)
    assert created is not None
    return KeyRecord(id=row.id, name=row.name, secret_hash=row.secret_hash, hint=row.hint,
                     models=tuple(row.models) if row.models is not None else None,
                     created_at=created, revoked_at=aware(row.revoked_at), rpm=row.rpm, itpm=row.itpm,
                     otpm=row.otpm, max_concurrency=row.max_concurrency, account_id=row.account_id,
                     budget=to_budget(row), log_bodies=bool(row.log_bodies))


def to_account(row: Any) -> AccountRecord:
    created = aware(row.created_at)
    assert created is not None
    return AccountRecord(id=row.id, name=row.name, created_at=created, budget=to_budget(row))


def to_entry(row: Any) -> LedgerEntry:
    return LedgerEntry(int(row.at_us), row.owner, row.kind, int(row.amount_nanousd), row.request_id, row.note)


def money_table(owner: str) -> Any:
    """The table holding ``owner``'s money limits, told by its id's prefix."""
    if owner.startswith("acct_"):
        return schema.accounts
    if owner.startswith("key_"):
        return schema.keys
    raise ValueError(f"not a key or account id: {owner!r}")


def account_values(account: AccountRecord) -> dict[str, Any]:
    b = account.budget
    return {"id": account.id, "name": account.name, "created_at": account.created_at,
            "updated_at": account.created_at, "prepaid": b.prepaid, "cap_nanousd": b.cap_nanousd,
            "cap_period": b.cap_period}
