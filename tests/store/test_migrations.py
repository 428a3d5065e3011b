"""Migrations on every backend: from an empty database to the newest revision, twice, down and up again, and
the schema check that ``serve`` runs before it starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from tollway.cli import main as cli_main
from tollway.errors import ConfigError
from tollway.store import KeyRecord, SQLStore, UsageRecord, open_store
from tollway.store.sql import HEAD_REVISION, MIGRATIONS, REVISIONS

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def empty(empty_url: str) -> AsyncIterator[SQLStore]:
    s = open_store(empty_url)
    yield s
    await s.close()


def alembic_config(conn: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


async def move_to(store: SQLStore, revision: str) -> None:
    """Upgrade or downgrade ``store`` to ``revision`` (``base``: nothing), as alembic's command line would."""
    current = await store.revision()

    def run(conn: Connection) -> None:
        cfg = alembic_config(conn)
        known = ("base", *REVISIONS)
        if known.index(revision) < known.index(current or "base"):
            command.downgrade(cfg, revision)
        else:
            command.upgrade(cfg, revision)

    async with store.engine.begin() as conn:
        await conn.run_sync(run)


async def set_revision(store: SQLStore, revision: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


async def tables(store: SQLStore) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


def test_revisions_are_alembics() -> None:
    """The list the start-up check reads without alembic is alembic's own chain, oldest first."""
    scripts = ScriptDirectory.from_config(alembic_config())
    assert tuple(reversed([s.revision for s in scripts.walk_revisions()])) == REVISIONS
    assert scripts.get_heads() == [HEAD_REVISION]


async def test_migrate_from_empty_to_head_then_again(empty: SQLStore) -> None:
    assert await empty.revision() is None
    await empty.migrate()
    assert await empty.revision() == HEAD_REVISION
    assert {"keys", "accounts", "usage", "ledger", "alembic_version"} <= await tables(empty)
    await empty.insert_key(KeyRecord(id="key_a", name="a", secret_hash="a" * 64, hint="tw-a", models=("m*",),
                                     created_at=T0))
    await empty.migrate()  # at head already: nothing to do, nothing lost
    assert await empty.revision() == HEAD_REVISION
    assert [(k.id, k.models) for k in await empty.list_keys()] == [("key_a", ("m*",))]


async def test_every_revision_goes_down_and_up_again(empty: SQLStore) -> None:
    await empty.migrate()
    for revision in reversed(("base", *REVISIONS[:-1])):
        await move_to(empty, revision)
        assert await empty.revision() == (None if revision == "base" else revision)
    assert await tables(empty) == {"alembic_version"}
    await empty.migrate()
    assert await empty.revision() == HEAD_REVISION


async def test_0005_gives_each_existing_key_an_account_of_its_own(empty: SQLStore) -> None:
    await move_to(empty, "0004")
    async with empty.engine.begin() as conn:
        for kid, name in (("key_a", "shared"), ("key_b", "shared"), ("key_c", "solo")):
            await conn.execute(
                text("INSERT INTO keys (id, name, secret_hash, hint, created_at, updated_at) "
                     "VALUES (:id, :name, :hash, 'tw-x', :t, :t)"),
                {"id": kid, "name": name, "hash": kid * 12, "t": T0})
    await empty.migrate()
    keys = {k.id: k for k in await empty.list_keys()}
    accounts = {a.id: a.name for a in await empty.list_accounts()}
    assert sorted(accounts.values()) == ["shared", "shared-key_b", "solo"]  # names stay unique
    assert {accounts[k.account_id] for k in keys.values() if k.account_id} == set(accounts.values())
    assert all(not k.budget.limited for k in keys.values())  # the new money columns take their defaults


@pytest.mark.parametrize("empty_url", ["postgres"], indirect=True)
async def test_postgres_column_types(empty: SQLStore) -> None:
    """Where SQLite's types are loose, PostgreSQL gets 64-bit ids and money, times with their zone, JSON."""
    await empty.migrate()
    async with empty.engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name IN ('keys', 'accounts', 'usage', 'ledger')"))
        types = {(t, c): d for t, c, d in rows}
    assert {k for k, v in types.items() if v == "bigint"} == {
        ("usage", "id"), ("ledger", "id"), ("usage", "cost_nanousd"), ("ledger", "amount_nanousd"),
        ("ledger", "at_us"), ("keys", "cap_nanousd"), ("accounts", "cap_nanousd")}
    assert {k for k, v in types.items() if v == "timestamp with time zone"} == {
        ("keys", "created_at"), ("keys", "revoked_at"), ("keys", "updated_at"), ("accounts", "created_at"),
        ("accounts", "updated_at"), ("usage", "created_at")}
    assert "timestamp without time zone" not in types.values()
    assert types["keys", "models"] == "json"


@pytest.mark.parametrize("empty_url", ["postgres"], indirect=True)
async def test_two_migrations_at_once_on_postgres_take_turns(empty_url: str) -> None:
    """Replicas deployed together may each run `tollway migrate`: the later ones wait for the first, then find
    nothing to do. (Unserialised, they would collide creating the same tables; in one process, as here, they
    would hang on each other.)"""
    stores = [open_store(empty_url) for _ in range(3)]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.migrate() for s in stores)), 30)
        assert [await s.revision() for s in stores] == [HEAD_REVISION] * 3
    finally:
        for s in stores:
            await s.close()


# -- the schema check before serving ----------------------------------------------------------------------


async def test_a_current_schema_passes_the_check(empty: SQLStore) -> None:
    await empty.migrate()
    await empty.ensure_current(auto_migrate=False)
    await empty.ensure_current(auto_migrate=True)
    assert await empty.revision() == HEAD_REVISION


async def test_an_empty_database_is_refused_without_auto_migrate(empty: SQLStore) -> None:
    with pytest.raises(ConfigError, match=r"has no Tollway schema yet.*run `tollway migrate`"):
        await empty.ensure_current(auto_migrate=False)
    assert await empty.revision() is None  # left as it was


async def test_an_older_schema_is_refused_without_auto_migrate(empty: SQLStore) -> None:
    await move_to(empty, "0004")
    with pytest.raises(ConfigError) as refused:
        await empty.ensure_current(auto_migrate=False)
    assert str(refused.value) == (f"storage.url: the database schema is at revision 0004, and this Tollway needs "
                                  f"revision {HEAD_REVISION}: run `tollway migrate` (with the same config) first")
    assert await empty.revision() == "0004"


@pytest.mark.parametrize("start", [None, "0001", "0004"])
async def test_auto_migrate_brings_an_older_schema_to_head(empty: SQLStore, start: str | None) -> None:
    if start is not None:
        await move_to(empty, start)
    await empty.ensure_current(auto_migrate=True)
    assert await empty.revision() == HEAD_REVISION
    await empty.insert_usage([UsageRecord("req_1", T0, None, "messages", None, None, None, False, 200, None)])


@pytest.mark.parametrize("auto_migrate", [False, True])
async def test_a_newer_schema_is_refused(empty: SQLStore, auto_migrate: bool) -> None:
    await empty.migrate()
    await set_revision(empty, "0099")
    with pytest.raises(ConfigError, match=r"revision 0099, which this Tollway does not know \(its newest is "
                                          rf"{HEAD_REVISION}\): this binary is older than the database"):
        await empty.ensure_current(auto_migrate=auto_migrate)
    assert await empty.revision() == "0099"


async def test_migrate_refuses_a_newer_schema_too(empty: SQLStore) -> None:
    """`tollway migrate` from an old binary must not try to run the database backwards."""
    await empty.migrate()
    await set_revision(empty, "0099")
    with pytest.raises(ConfigError, match="this binary is older than the database"):
        await empty.migrate()
    assert await empty.revision() == "0099"


def test_commands_other_than_migrate_leave_a_shared_database_to_migrate(
        empty_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(f'[storage]\nurl = "{empty_url}"\n\n[[upstreams]]\nname = "mock"\nkind = "mock"\n\n'
                    '[[models]]\nname = "m"\ntargets = [{ upstream = "mock" }]\n')
    code = cli_main(["keys", "list", "--config", str(conf)])
    if empty_url.startswith("sqlite"):
        assert code == 0  # one machine: brought up to date on the spot, as `serve` does
        return
    assert code == 2
    assert "tollway migrate" in capsys.readouterr().err
    assert cli_main(["migrate", "--config", str(conf)]) == 0
    assert cli_main(["keys", "list", "--config", str(conf)]) == 0
