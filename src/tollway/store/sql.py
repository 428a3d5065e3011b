"""The durable store on SQLAlchemy Core: keys, accounts, usage rows and the money ledger.

Almost nothing here runs on a request's path: keys and balances are read into memory in bulk, usage rows and
ledger entries are written in batches. What does (a key this process has not loaded yet, the admin API) meets
a database that cannot be reached as `StoreUnavailable`, an Anthropic-shaped 529 the SDKs retry, within
``connect_timeout`` at most: never a traceback or a hang.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Integer, func, insert, inspect, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tollway.errors import ConfigError
from tollway.store import schema
from tollway.store.engine import (
    CONNECT_TIMEOUT,
    POSTGRES_PREFIXES,
    SQLITE_PREFIX,
    StoreUnavailable,
    async_url,
    display_url,
    unreachable,
)
from tollway.store.records import AccountRecord, KeyRecord, LedgerEntry, UsageRecord, UsageSummary
from tollway.store.rows import (
    account_values,
    aware,
    money_table,
    order_as_sqlite,
    pg_unnest_sql,
    to_account,
    to_entry,
    to_key,
)
from tollway.store.sqlite_writer import SQLiteUsageWriter

# Re-exported: callers found these here before they had a module of their own.
__all__ = ["CONNECT_TIMEOUT", "POSTGRES_PREFIXES", "SQLITE_PREFIX", "SQLStore", "StoreUnavailable", "async_url",
           "display_url", "unreachable"]

MIGRATIONS = Path(__file__).parent / "migrations"
# Every revision in migrations/versions, oldest first (a test holds this to alembic's own list): the schema
# check at start reads it without loading alembic, which is slow to import.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
KEY_SETTINGS = frozenset({"rpm", "itpm", "otpm", "max_concurrency", "models", "log_bodies"})
HEAD_REVISION = REVISIONS[-1]
SUMMARY_GROUPS = ("key", "model", "upstream", "day")

# Any constant will do, as long as only migrations take it: two replicas that start `tollway migrate` at
# once run it one after the other, and the second finds nothing left to do.
_MIGRATION_LOCK = 0x746F6C6C776179
# Readers of the ledger keep the id of the last entry they counted and later ask for the top-ups after it. On
# SQLite writers take turns, so ids commit in order. On PostgreSQL a top-up could take an id, commit after a
# reader passed that id, and never be counted: top-ups hold this lock from before their id is drawn until
# their commit, and those readers wait for it (in shared mode, so they do not wait for each other).
_TOPUP_LOCK = _MIGRATION_LOCK + 1
def _current_revision(conn: Connection) -> str | None:
    # Looking first, rather than catching the failed SELECT: on PostgreSQL a failed statement aborts the
    # transaction around it, and leaves an error in the server's log on every fresh start.
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def _refuse_unknown(revision: str | None) -> None:
    if revision is not None and revision not in REVISIONS:
        raise ConfigError(
            f"storage.url: the database schema is at revision {revision}, which this Tollway does not know (its "
            f"newest is {HEAD_REVISION}): this binary is older than the database; run the Tollway version that "
            "migrated it, or a newer one")


class SQLStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._usage_writer: SQLiteUsageWriter | None = None
        """SQLite's: usage and ledger batches go through it rather than the engine."""
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:":
                # Each connection would have a database of its own: the usage writer's would have no tables.
                raise ConfigError("storage.url: an in-memory SQLite database cannot be shared by Tollway's "
                                  "connections; give a file path (sqlite:///tollway.db)")
            self._usage_writer = SQLiteUsageWriter(database)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self.engine.dialect.name)

    @classmethod
    def open(cls, url: str, *, pool_size: int = 10, max_overflow: int = 5,
             connect_timeout: float = CONNECT_TIMEOUT) -> SQLStore:
        """A store on ``url``; the pool sizes and the connect timeout apply to PostgreSQL (SQLite keeps
        SQLAlchemy's own pool)."""
        target = async_url(url)
        if url.startswith(SQLITE_PREFIX):
            path = Path(url.removeprefix(SQLITE_PREFIX))
            if str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
            return cls(create_async_engine(target))
        # pre_ping: a pooled connection that a database restart or a proxy's idle timeout closed is replaced
        # rather than failing a batch write; one round trip per checkout, and no checkout is on a request's path.
        return cls(create_async_engine(target, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                                       pool_timeout=connect_timeout, connect_args={"timeout": connect_timeout}))

    async def close(self) -> None:
        if self._usage_writer is not None:
            await self._usage_writer.close()
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; a database out of reach raises `StoreUnavailable`."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except Exception as error:
            if unreachable(error) and not isinstance(error, StoreUnavailable):
                raise StoreUnavailable(error) from error
            raise

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed at the end; a database out of reach raises
        `StoreUnavailable` (the transaction then may or may not have committed, as with any lost commit)."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as error:
            if unreachable(error) and not isinstance(error, StoreUnavailable):
                raise StoreUnavailable(error) from error
            raise

    # -- schema -------------------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (alembic, imported only here: it is slow to load).

        Refuses, with ConfigError, a database whose schema is newer than this code knows."""

        def upgrade(conn: Connection) -> None:
            from alembic import command
            from alembic.config import Config as AlembicConfig

            _refuse_unknown(_current_revision(conn))
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self._begin() as conn:
            if self.dialect == "sqlite":
                # WAL lets the CLI read usage while the server writes it.
                await conn.execute(text("PRAGMA journal_mode=WAL"))
            else:
                # Held to the end of this transaction, which is the whole migration (PostgreSQL's DDL is
                # transactional).
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            await conn.run_sync(upgrade)

    async def revision(self) -> str | None:
        """The schema revision the database is at; None for a database Tollway never migrated."""
        async with self._connect() as conn:
            return await conn.run_sync(_current_revision)

    async def ensure_current(self, *, auto_migrate: bool) -> None:
        """Make sure the schema is the one this code was written for, before serving.

        With ``auto_migrate`` (the one-command SQLite start) an older schema is migrated; without it (a shared
        PostgreSQL, which an operator migrates once with ``tollway migrate`` rather than every replica at its
        start) it is refused. A newer schema is always refused. Both refusals are ConfigError."""
        current = await self.revision()
        if current == HEAD_REVISION:
            return
        _refuse_unknown(current)
        if auto_migrate:
            await self.migrate()
            return
        found = "has no Tollway schema yet" if current is None else f"schema is at revision {current}"
        raise ConfigError(f"storage.url: the database {found}, and this Tollway needs revision {HEAD_REVISION}: "
                          "run `tollway migrate` (with the same config) first")

    # -- keys ---------------------------------------------------------------------------------------

    async def insert_key(self, key: KeyRecord, account: AccountRecord | None = None) -> None:
        """Store a key, and with it (in the same transaction) ``account``, a new account of its own."""
        async with self._begin() as conn:
            if account is not None:
                await conn.execute(insert(schema.accounts).values(**account_values(account)))
            b = key.budget
            await conn.execute(insert(schema.keys).values(
                id=key.id, name=key.name, secret_hash=key.secret_hash, hint=key.hint,
                models=list(key.models) if key.models is not None else None,
                created_at=key.created_at, revoked_at=key.revoked_at, updated_at=key.created_at, rpm=key.rpm,
                itpm=key.itpm, otpm=key.otpm, max_concurrency=key.max_concurrency, account_id=key.account_id,
                prepaid=b.prepaid, cap_nanousd=b.cap_nanousd, cap_period=b.cap_period, log_bodies=key.log_bodies))

    async def list_keys(self) -> list[KeyRecord]:
        async with self._connect() as conn:
            # The id breaks ties: without it PostgreSQL returns equal times in the order rows were last written.
            rows = await conn.execute(select(schema.keys).order_by(schema.keys.c.created_at, schema.keys.c.id))
            return [to_key(r) for r in rows]

    async def keys_changed_since(self, since: datetime | None) -> list[KeyRecord]:
        query = select(schema.keys)
        if since is not None:
            query = query.where(schema.keys.c.updated_at >= since)
        async with self._connect() as conn:
            return [to_key(r) for r in await conn.execute(query)]

    async def key_by_hash(self, secret_hash: str) -> KeyRecord | None:
        async with self._connect() as conn:
            row = (await conn.execute(select(schema.keys).where(schema.keys.c.secret_hash == secret_hash))).first()
        return None if row is None else to_key(row)

    async def update_key(self, key_id: str, changes: Mapping[str, object]) -> bool:
        """Set any of the key's limits, ``models`` (patterns, or None for every model) and ``log_bodies``; True
        if the key exists. The new ``updated_at`` is what has every replica's key cache reload the key."""
        unknown = set(changes) - KEY_SETTINGS
        if unknown:
            raise ValueError(f"not a key setting: {', '.join(sorted(unknown))}")
        values = dict(changes)
        models = values.get("models")
        if isinstance(models, tuple):
            values["models"] = list(models)
        async with self._begin() as conn:
            result = await conn.execute(
                update(schema.keys).where(schema.keys.c.id == key_id)
                .values(**values, updated_at=datetime.now(UTC)))
        return result.rowcount > 0

    async def key(self, key_id: str) -> KeyRecord | None:
        async with self._connect() as conn:
            row = (await conn.execute(select(schema.keys).where(schema.keys.c.id == key_id))).first()
        return None if row is None else to_key(row)

    async def revoke_key(self, key_id: str) -> bool:
        now = datetime.now(UTC)
        async with self._begin() as conn:
            result = await conn.execute(
                update(schema.keys).where(schema.keys.c.id == key_id, schema.keys.c.revoked_at.is_(None))
                .values(revoked_at=now, updated_at=now))
        return result.rowcount > 0

    # -- accounts and money -------------------------------------------------------------------------

    async def insert_account(self, account: AccountRecord) -> None:
        async with self._begin() as conn:
            await conn.execute(insert(schema.accounts).values(**account_values(account)))

    async def list_accounts(self) -> list[AccountRecord]:
        async with self._connect() as conn:
            rows = await conn.execute(select(schema.accounts).order_by(schema.accounts.c.created_at,
                                                                       schema.accounts.c.id))
            return [to_account(r) for r in rows]

    async def account(self, ref: str) -> AccountRecord | None:
        """The account with this id or name."""
        a = schema.accounts
        async with self._connect() as conn:
            row = (await conn.execute(select(a).where(or_(a.c.id == ref, a.c.name == ref)))).first()
        return None if row is None else to_account(row)

    async def accounts_changed_since(self, since: datetime | None) -> list[AccountRecord]:
        query = select(schema.accounts)
        if since is not None:
            query = query.where(schema.accounts.c.updated_at >= since)
        async with self._connect() as conn:
            return [to_account(r) for r in await conn.execute(query)]

    async def set_budget(self, owner: str, changes: dict[str, Any]) -> bool:
        """Set some of ``prepaid``, ``cap_nanousd`` and ``cap_period`` on a key or an account; True if it
        exists."""
        table = money_table(owner)
        async with self._begin() as conn:
            result = await conn.execute(update(table).where(table.c.id == owner)
                                        .values(**changes, updated_at=datetime.now(UTC)))
        return result.rowcount > 0

    async def topup(self, owner: str, amount_nanousd: int, note: str | None = None) -> int | None:
        """Add money to a key's or account's balance (which makes it prepaid); its new balance, or None if
        there is no such owner."""
        table = money_table(owner)
        now = datetime.now(UTC)
        async with self._begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _TOPUP_LOCK})
            # Adding money makes the owner prepaid; taking it back leaves that as it is (an owner switched to
            # no balance stays so).
            changes: dict[str, Any] = {"prepaid": True} if amount_nanousd > 0 else {}
            result = await conn.execute(update(table).where(table.c.id == owner)
                                        .values(**changes, updated_at=now))
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
        entries added after can be told apart: no top-up committed later has an id at or below it."""
        g = schema.ledger
        async with self._connect() as conn:
            await self._after_topups_in_flight(conn)
            last = int(await conn.scalar(select(func.coalesce(func.max(g.c.id), 0))) or 0)
            rows = await conn.execute(select(g.c.owner, func.sum(g.c.amount_nanousd))
                                      .where(g.c.id <= last).group_by(g.c.owner))
            return {owner: int(total) for owner, total in rows}, last

    async def _after_topups_in_flight(self, conn: AsyncConnection) -> None:
        # Held to the end of the caller's transaction, which is its reads: top-ups wait for them too.
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _TOPUP_LOCK})

    async def spend_by_key(self, since: datetime) -> dict[str, int]:
        """What each key's requests have cost since ``since``, from the usage rows."""
        u = schema.usage
        async with self._connect() as conn:
            rows = await conn.execute(
                select(u.c.key_id, func.sum(u.c.cost_nanousd))
                .where(u.c.created_at >= since, u.c.key_id.is_not(None), u.c.cost_nanousd.is_not(None))
                .group_by(u.c.key_id))
            return {key_id: int(total) for key_id, total in rows}

    async def ledger_entries(self, *, owner: str | None = None, kinds: Sequence[str] | None = None,
                             after_id: int | None = None, newest: int | None = None) -> list[tuple[int, LedgerEntry]]:
        """Entries with their ids, oldest first; or, with ``newest``, that many of the latest, newest first.

        Ids increase but may skip (PostgreSQL); with ``after_id``, no top-up committed later has an id at or
        below the last one returned."""
        g = schema.ledger
        query = select(g).order_by(g.c.id) if newest is None else select(g).order_by(g.c.id.desc()).limit(newest)
        if owner is not None:
            query = query.where(g.c.owner == owner)
        if kinds is not None:
            query = query.where(g.c.kind.in_(kinds))
        if after_id is not None:
            query = query.where(g.c.id > after_id)
        async with self._connect() as conn:
            if after_id is not None:
                await self._after_topups_in_flight(conn)
            return [(int(r.id), to_entry(r)) for r in await conn.execute(query)]

    async def open_reserves(self) -> list[LedgerEntry]:
        """Reserves that no settle or release followed: their requests were cut off by a stop."""
        g, done = schema.ledger, schema.ledger.alias("done")
        closed = select(done.c.id).where(done.c.request_id == g.c.request_id, done.c.owner == g.c.owner,
                                         done.c.kind.in_(("settle", "release")))
        async with self._connect() as conn:
            rows = await conn.execute(select(g).where(g.c.kind == "reserve", ~closed.exists()).order_by(g.c.id))
            return [to_entry(r) for r in rows]

    # -- usage --------------------------------------------------------------------------------------

    async def insert_usage(self, records: Sequence[UsageRecord], entries: Sequence[LedgerEntry] = ()) -> None:
        """Write usage rows and ledger entries in one transaction: a request's cost and its settlement are
        stored together or not at all."""
        if not records and not entries:
            return
        if self._usage_writer is not None:
            await self._usage_writer.write(records, entries)
            return
        async with self._begin() as conn:
            # One statement per table whatever the batch's size: each column goes as one array parameter and
            # unnest() turns the arrays back into rows. Measured on 10,000 requests' rows and entries: half the
            # client CPU of an executemany, and a third less time.
            if records:
                await conn.exec_driver_sql(pg_unnest_sql(schema.usage, UsageRecord._fields, ("request_id",)),
                                           tuple(map(list, zip(*records, strict=True))))
            if entries:
                await conn.exec_driver_sql(pg_unnest_sql(schema.ledger, LedgerEntry._fields, ()),
                                           tuple(map(list, zip(*entries, strict=True))))

    async def usage_rows(self, limit: int = 1000) -> list[UsageRecord]:
        u = schema.usage
        async with self._connect() as conn:
            rows = await conn.execute(select(u).order_by(u.c.id.desc()).limit(limit))
            out = []
            for r in rows:
                values = {f: getattr(r, f) for f in UsageRecord._fields}
                values["created_at"] = aware(values["created_at"])
                out.append(UsageRecord(**values))
            return out

    async def newest_request_entry_at(self) -> int | None:
        """When (microseconds) the newest ledger entry a request made (not a top-up) was written, if any."""
        g = schema.ledger
        async with self._connect() as conn:
            return await conn.scalar(select(g.c.at_us).where(g.c.kind != "topup").order_by(g.c.id.desc()).limit(1))

    async def stored_requests(self, request_ids: Sequence[str]) -> frozenset[str]:
        """Which of these requests have their usage row stored (and with it their ledger entries)."""
        u = schema.usage
        found: set[str] = set()
        async with self._connect() as conn:
            for start in range(0, len(request_ids), 1000):
                chunk = list(request_ids[start:start + 1000])
                found.update(r[0] for r in await conn.execute(select(u.c.request_id).where(u.c.request_id.in_(chunk))))
        return frozenset(found)

    async def usage_summary(self, key: str | None = None, since: datetime | None = None,
                            by: Sequence[str] = ("key", "model")) -> list[UsageSummary]:
        """Requests, errors, tokens and cost, grouped ``by`` any of key, model, upstream and day (UTC);
        ``key`` matches a key's id or name."""
        u, k = schema.usage, schema.keys
        unknown = set(by) - set(SUMMARY_GROUPS)
        if unknown:
            raise ValueError(f"cannot group usage by {', '.join(sorted(unknown))}")
        postgres = self.dialect == "postgresql"
        # The UTC day on both: SQLite keeps UTC text, and PostgreSQL's date() of a timestamptz would use the
        # session's time zone.
        day = func.date(func.timezone("UTC", u.c.created_at)) if postgres else func.date(u.c.created_at)
        columns: dict[str, list[Any]] = {"key": [u.c.key_id, k.c.name], "model": [u.c.model],
                                         "upstream": [u.c.upstream], "day": [day.label("day")]}
        groups = [c for g in SUMMARY_GROUPS if g in by for c in columns[g]]
        # SQLite's order (NULL first, text by bytes) on PostgreSQL too, whatever the database's collation.
        order = [order_as_sqlite(c) for c in groups] if postgres else groups
        query = (
            select(*groups, func.count().label("requests"),
                   func.sum((u.c.status >= 400).cast(Integer)).label("errors"),
                   func.sum(u.c.input_tokens), func.sum(u.c.output_tokens),
                   func.sum(u.c.cache_creation_5m), func.sum(u.c.cache_creation_1h),
                   func.sum(u.c.cache_read_input_tokens), func.sum(u.c.cost_nanousd))
            .select_from(u.outerjoin(k, u.c.key_id == k.c.id))
            .group_by(*groups)
            .order_by(*order)
        )
        if key is not None:
            query = query.where(or_(u.c.key_id == key, k.c.name == key))
        if since is not None:
            query = query.where(u.c.created_at >= since)
        async with self._connect() as conn:
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
