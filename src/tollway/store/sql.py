"""The durable store on SQLAlchemy Core: keys, accounts, usage rows and the money ledger.

Nothing here runs on a request's path: keys and balances are read into memory in bulk, usage rows and
ledger entries are written in batches.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Integer, func, insert, or_, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tollway.errors import ConfigError
from tollway.store import schema
from tollway.store.records import AccountRecord, Budget, KeyRecord, LedgerEntry, UsageRecord, UsageSummary

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = "0005"
SUMMARY_GROUPS = ("key", "model", "upstream", "day")


def async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    raise ConfigError(f"storage.url: unsupported database URL {url!r}")


# SQLite allows 32,766 bound values per statement; rows have 18.
_SQLITE_ROWS_PER_STATEMENT = 1000


def _sqlite_time(value: datetime) -> str:
    # The text form SQLAlchemy's DateTime type reads back on SQLite (naive, UTC). isoformat is several
    # times cheaper than strftime, and this runs for every row and ledger entry written.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


@functools.cache
def _sqlite_insert_sql(table: str, fields: tuple[str, ...], rows: int) -> str:
    one = "(" + ", ".join("?" * len(fields)) + ")"
    # OR IGNORE: a batch retried after a failure that came after its commit must not fail on its own rows.
    return f"INSERT OR IGNORE INTO {table} ({', '.join(fields)}) VALUES " + ", ".join([one] * rows)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything Tollway stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _budget(row: Any) -> Budget:
    return Budget(prepaid=bool(row.prepaid), cap_nanousd=row.cap_nanousd, cap_period=row.cap_period)


def _key(row: Any) -> KeyRecord:
    created = _aware(row.created_at)
    assert created is not None
    return KeyRecord(id=row.id, name=row.name, secret_hash=row.secret_hash, hint=row.hint,
                     models=tuple(row.models) if row.models is not None else None,
                     created_at=created, revoked_at=_aware(row.revoked_at), rpm=row.rpm, itpm=row.itpm,
                     otpm=row.otpm, max_concurrency=row.max_concurrency, account_id=row.account_id,
                     budget=_budget(row))


def _account(row: Any) -> AccountRecord:
    created = _aware(row.created_at)
    assert created is not None
    return AccountRecord(id=row.id, name=row.name, created_at=created, budget=_budget(row))


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(int(row.at_us), row.owner, row.kind, int(row.amount_nanousd), row.request_id, row.note)


def _money_table(owner: str) -> Any:
    """The table holding ``owner``'s money limits, told by its id's prefix."""
    if owner.startswith("acct_"):
        return schema.accounts
    if owner.startswith("key_"):
        return schema.keys
    raise ValueError(f"not a key or account id: {owner!r}")


def _account_values(account: AccountRecord) -> dict[str, Any]:
    b = account.budget
    return {"id": account.id, "name": account.name, "created_at": account.created_at,
            "updated_at": account.created_at, "prepaid": b.prepaid, "cap_nanousd": b.cap_nanousd,
            "cap_period": b.cap_period}


class SQLStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def _insert(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert
        return sqlite_insert

    @classmethod
    def open(cls, url: str) -> SQLStore:
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(async_url(url))
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (alembic, imported only here: it is slow to load)."""

        def upgrade(conn: Connection) -> None:
            from alembic import command
            from alembic.config import Config as AlembicConfig

            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                # WAL lets the CLI read usage while the server writes it.
                await conn.execute(text("PRAGMA journal_mode=WAL"))
            await conn.run_sync(upgrade)

    async def revision(self) -> str | None:
        async with self.engine.connect() as conn:
            try:
                row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
            except Exception:  # no table yet: a fresh database
                return None
        return None if row is None else str(row[0])

    # -- keys ---------------------------------------------------------------------------------------

    async def insert_key(self, key: KeyRecord, account: AccountRecord | None = None) -> None:
        """Store a key, and with it (in the same transaction) ``account``, a new account of its own."""
        async with self.engine.begin() as conn:
            if account is not None:
                await conn.execute(insert(schema.accounts).values(**_account_values(account)))
            b = key.budget
            await conn.execute(insert(schema.keys).values(
                id=key.id, name=key.name, secret_hash=key.secret_hash, hint=key.hint,
                models=list(key.models) if key.models is not None else None,
                created_at=key.created_at, revoked_at=key.revoked_at, updated_at=key.created_at, rpm=key.rpm,
                itpm=key.itpm, otpm=key.otpm, max_concurrency=key.max_concurrency, account_id=key.account_id,
                prepaid=b.prepaid, cap_nanousd=b.cap_nanousd, cap_period=b.cap_period))

    async def list_keys(self) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(schema.keys).order_by(schema.keys.c.created_at))
            return [_key(r) for r in rows]

    async def keys_changed_since(self, since: datetime | None) -> list[KeyRecord]:
        query = select(schema.keys)
        if since is not None:
            query = query.where(schema.keys.c.updated_at >= since)
        async with self.engine.connect() as conn:
            return [_key(r) for r in await conn.execute(query)]

    async def key_by_hash(self, secret_hash: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(schema.keys).where(schema.keys.c.secret_hash == secret_hash))).first()
        return None if row is None else _key(row)

    async def update_key_limits(self, key_id: str, limits: dict[str, int | None]) -> bool:
        """Set some of rpm, itpm, otpm, max_concurrency (None removes a limit); True if the key exists."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(schema.keys).where(schema.keys.c.id == key_id)
                .values(**limits, updated_at=datetime.now(UTC)))
        return result.rowcount > 0

    async def key(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(schema.keys).where(schema.keys.c.id == key_id))).first()
        return None if row is None else _key(row)

    async def revoke_key(self, key_id: str) -> bool:
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(schema.keys).where(schema.keys.c.id == key_id, schema.keys.c.revoked_at.is_(None))
                .values(revoked_at=now, updated_at=now))
        return result.rowcount > 0

    # -- accounts and money -------------------------------------------------------------------------

    async def insert_account(self, account: AccountRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(schema.accounts).values(**_account_values(account)))

    async def list_accounts(self) -> list[AccountRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(schema.accounts).order_by(schema.accounts.c.created_at))
            return [_account(r) for r in rows]

    async def account(self, ref: str) -> AccountRecord | None:
        """The account with this id or name."""
        a = schema.accounts
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(a).where(or_(a.c.id == ref, a.c.name == ref)))).first()
        return None if row is None else _account(row)

    async def accounts_changed_since(self, since: datetime | None) -> list[AccountRecord]:
        query = select(schema.accounts)
        if since is not None:
            query = query.where(schema.accounts.c.updated_at >= since)
        async with self.engine.connect() as conn:
            return [_account(r) for r in await conn.execute(query)]

    async def set_budget(self, owner: str, changes: dict[str, Any]) -> bool:
        """Set some of ``prepaid``, ``cap_nanousd`` and ``cap_period`` on a key or an account; True if it
        exists."""
        table = _money_table(owner)
        async with self.engine.begin() as conn:
            result = await conn.execute(update(table).where(table.c.id == owner)
                                        .values(**changes, updated_at=datetime.now(UTC)))
        return result.rowcount > 0

    async def topup(self, owner: str, amount_nanousd: int, note: str | None = None) -> int | None:
        """Add money to a key's or account's balance (which makes it prepaid); its new balance, or None if
        there is no such owner."""
        table = _money_table(owner)
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            result = await conn.execute(update(table).where(table.c.id == owner)
                                        .values(prepaid=True, updated_at=now))
            if result.rowcount == 0:
                return None
            await conn.execute(insert(schema.ledger).values(
                at_us=round(now.timestamp() * 1_000_000), owner=owner, kind="topup", amount_nanousd=amount_nanousd,
                note=note))
            balance = await conn.scalar(select(func.coalesce(func.sum(schema.ledger.c.amount_nanousd), 0))
                                        .where(schema.ledger.c.owner == owner))
        return int(balance or 0)

    async def balances(self) -> tuple[dict[str, int], int]:
        """Every owner's balance (the sum of its ledger entries), and the id of the last entry counted, so
        entries added after can be told apart."""
        g = schema.ledger
        async with self.engine.connect() as conn:
            last = int(await conn.scalar(select(func.coalesce(func.max(g.c.id), 0))) or 0)
            rows = await conn.execute(select(g.c.owner, func.sum(g.c.amount_nanousd))
                                      .where(g.c.id <= last).group_by(g.c.owner))
            return {owner: int(total) for owner, total in rows}, last

    async def spend_by_key(self, since: datetime) -> dict[str, int]:
        """What each key's requests have cost since ``since``, from the usage rows."""
        u = schema.usage
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(u.c.key_id, func.sum(u.c.cost_nanousd))
                .where(u.c.created_at >= since, u.c.key_id.is_not(None), u.c.cost_nanousd.is_not(None))
                .group_by(u.c.key_id))
            return {key_id: int(total) for key_id, total in rows}

    async def ledger_entries(self, *, owner: str | None = None, kinds: Sequence[str] | None = None,
                             after_id: int | None = None, newest: int | None = None) -> list[tuple[int, LedgerEntry]]:
        """Entries with their ids, oldest first; or, with ``newest``, that many of the latest, newest first."""
        g = schema.ledger
        query = select(g).order_by(g.c.id) if newest is None else select(g).order_by(g.c.id.desc()).limit(newest)
        if owner is not None:
            query = query.where(g.c.owner == owner)
        if kinds is not None:
            query = query.where(g.c.kind.in_(kinds))
        if after_id is not None:
            query = query.where(g.c.id > after_id)
        async with self.engine.connect() as conn:
            return [(int(r.id), _entry(r)) for r in await conn.execute(query)]

    async def open_reserves(self) -> list[LedgerEntry]:
        """Reserves that no settle or release followed: their requests were cut off by a stop."""
        g, done = schema.ledger, schema.ledger.alias("done")
        closed = select(done.c.id).where(done.c.request_id == g.c.request_id, done.c.owner == g.c.owner,
                                         done.c.kind.in_(("settle", "release")))
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(g).where(g.c.kind == "reserve", ~closed.exists()).order_by(g.c.id))
            return [_entry(r) for r in rows]

    # -- usage --------------------------------------------------------------------------------------

    async def insert_usage(self, records: Sequence[UsageRecord], entries: Sequence[LedgerEntry] = ()) -> None:
        """Write usage rows and ledger entries in one transaction: a request's cost and its settlement are
        stored together or not at all."""
        if not records and not entries:
            return
        async with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                # Many rows per statement, as plain tuples: one step of SQLite's engine (and one GIL
                # hand-off by its driver thread) per chunk, not per row, and no per-row SQLAlchemy work.
                # Measured under load: about 10% less CPU per gateway request than Core executemany.
                for start in range(0, len(records), _SQLITE_ROWS_PER_STATEMENT):
                    chunk = records[start:start + _SQLITE_ROWS_PER_STATEMENT]
                    params = tuple(v for r in chunk for v in (r[0], _sqlite_time(r.created_at), *r[2:]))
                    await conn.exec_driver_sql(_sqlite_insert_sql("usage", UsageRecord._fields, len(chunk)), params)
                for start in range(0, len(entries), _SQLITE_ROWS_PER_STATEMENT):
                    part = entries[start:start + _SQLITE_ROWS_PER_STATEMENT]
                    params = tuple(itertools.chain.from_iterable(part))
                    await conn.exec_driver_sql(_sqlite_insert_sql("ledger", LedgerEntry._fields, len(part)), params)
            else:
                if records:
                    # A batch retried after a failure that came after its commit must not fail on its rows.
                    statement = self._insert(schema.usage).on_conflict_do_nothing(index_elements=["request_id"])
                    await conn.execute(statement, [r._asdict() for r in records])
                if entries:
                    statement = self._insert(schema.ledger).on_conflict_do_nothing(
                        index_elements=["request_id", "owner", "kind"])
                    await conn.execute(statement, [e._asdict() for e in entries])

    async def usage_rows(self, limit: int = 1000) -> list[UsageRecord]:
        u = schema.usage
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(u).order_by(u.c.id.desc()).limit(limit))
            out = []
            for r in rows:
                values = {f: getattr(r, f) for f in UsageRecord._fields}
                values["created_at"] = _aware(values["created_at"])
                out.append(UsageRecord(**values))
            return out

    async def usage_summary(self, key: str | None = None, since: datetime | None = None,
                            by: Sequence[str] = ("key", "model")) -> list[UsageSummary]:
        """Requests, errors, tokens and cost, grouped ``by`` any of key, model, upstream and day (UTC);
        ``key`` matches a key's id or name."""
        u, k = schema.usage, schema.keys
        unknown = set(by) - set(SUMMARY_GROUPS)
        if unknown:
            raise ValueError(f"cannot group usage by {', '.join(sorted(unknown))}")
        columns: dict[str, list[Any]] = {"key": [u.c.key_id, k.c.name], "model": [u.c.model],
                                         "upstream": [u.c.upstream], "day": [func.date(u.c.created_at).label("day")]}
        groups = [c for g in SUMMARY_GROUPS if g in by for c in columns[g]]
        query = (
            select(*groups, func.count().label("requests"),
                   func.sum((u.c.status >= 400).cast(Integer)).label("errors"),
                   func.sum(u.c.input_tokens), func.sum(u.c.output_tokens),
                   func.sum(u.c.cache_creation_5m), func.sum(u.c.cache_creation_1h),
                   func.sum(u.c.cache_read_input_tokens), func.sum(u.c.cost_nanousd))
            .select_from(u.outerjoin(k, u.c.key_id == k.c.id))
            .group_by(*groups)
            .order_by(*groups)
        )
        if key is not None:
            query = query.where(or_(u.c.key_id == key, k.c.name == key))
        if since is not None:
            query = query.where(u.c.created_at >= since)
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(query))
        out = []
        for r in rows:
            values: list[Any] = list(r)
            head = values[:len(groups)]
            requests, errors, inp, outp, c5m, c1h, read, cost = values[len(groups):]
            named: dict[str, Any] = {}
            for g in SUMMARY_GROUPS:
                if g not in by:
                    continue
                if g == "key":
                    named["key_id"], named["key_name"] = head.pop(0), head.pop(0)
                else:
                    value = head.pop(0)
                    named[g] = None if value is None else str(value)
            out.append(UsageSummary(
                named.get("key_id"), named.get("key_name"), named.get("model"), int(requests), int(errors or 0),
                int(inp or 0), int(outp or 0), int(c5m or 0), int(c1h or 0), int(read or 0),
                None if cost is None else int(cost), upstream=named.get("upstream"), day=named.get("day")))
        return out
