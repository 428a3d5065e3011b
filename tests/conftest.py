from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.loop_thread import AppServer
from tollway.accounting.keys import new_key
from tollway.api.app import create_app, front_site
from tollway.api.context import SERVICES
from tollway.config import Config, parse_config
from tollway.store import AccountRecord, Budget, SQLStore, UsageRecord, open_store
from tollway.store.schema import metadata
from tollway.store.sql import async_url, display_url

FIXTURES = Path(__file__).parent / "fixtures"


class Upstream:
    def __init__(self) -> None:
        self.fake = FakeAnthropic()
        self.server = AppServer(self.fake.app(), "fake-anthropic")
        self.url = self.server.url


class Gateway:
    """A real Tollway on a loopback port, with helpers that reach into its store from its own loop."""

    def __init__(self, config: Config,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self.config = config
        self.app = create_app(config)
        # Its client port as `tollway serve` makes it: the front, handing what is not its own to aiohttp.
        self.server = AppServer(self.app, "tollway", loop_factory=loop_factory,
                                site=lambda runner: front_site(runner, config, "127.0.0.1", 0, grace=5.0))
        self.url = self.server.url

    @property
    def services(self) -> Any:
        return self.app[SERVICES]

    def create_key(self, name: str = "test", models: tuple[str, ...] | None = None, *, rpm: int | None = None,
                   itpm: int | None = None, otpm: int | None = None, max_concurrency: int | None = None,
                   budget: Budget | None = None, account: str | None = None, log_bodies: bool = False) -> str:
        record, secret = new_key(name, models)
        record = dataclasses.replace(record, rpm=rpm, itpm=itpm, otpm=otpm, max_concurrency=max_concurrency,
                                     budget=budget or Budget(), account_id=account, log_bodies=log_bodies)
        self.server.thread.run(self.services.store.insert_key(record))
        return secret

    def create_account(self, name: str, budget: Budget | None = None) -> str:
        account = AccountRecord(id="acct_" + secrets.token_hex(8), name=name, created_at=datetime.now(UTC),
                                budget=budget or Budget())
        self.server.thread.run(self.services.store.insert_account(account))
        return account.id

    def topup(self, owner: str, usd_nano: int) -> None:
        """Top up as the CLI does (a ledger entry in the store), then let the gateway pick it up now."""
        self.server.thread.run(self.services.store.topup(owner, usd_nano))
        self.server.thread.run(self.services.funds.refresh())

    def balance(self, owner: str) -> tuple[int, int]:
        """The gateway's balance for ``owner`` and the ledger's sum in the store, after a flush."""
        self.server.thread.run(self.services.ledger.flush())
        stored, _ = self.server.thread.run(self.services.store.balances())
        return self.services.funds.wallet.purses[owner].balance, stored.get(owner, 0)

    def key_id(self, name: str) -> str:
        keys = self.server.thread.run(self.services.store.list_keys())
        return str(next(k.id for k in keys if k.name == name))

    def usage(self) -> list[UsageRecord]:
        """Every usage row, newest first, after flushing what is queued."""
        self.server.thread.run(self.services.ledger.flush())
        return self.server.thread.run(self.services.store.usage_rows(limit=100_000))

    def row(self, request_id: str) -> UsageRecord:
        rows = [r for r in self.usage() if r.request_id == request_id]
        assert len(rows) == 1, f"expected one usage row for {request_id}, found {len(rows)}"
        return rows[0]

    def client(self, secret: str, **kwargs: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=secret, base_url=self.url, max_retries=0, **kwargs)


def gateway_config(upstream_url: str, db: Path) -> Config:
    raw = {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {"url": f"sqlite:///{db}", "flush_interval": 0.05, "key_refresh_interval": 0.2},
        "upstreams": [
            {"name": "fake", "kind": "anthropic", "base_url": upstream_url, "api_keys": ["upstream-secret"]},
            {"name": "mock", "kind": "mock"},
            # Port 1 on loopback refuses connections: an upstream that is down.
            {"name": "dead", "kind": "anthropic", "base_url": "http://127.0.0.1:1", "api_keys": ["x"]},
        ],
        "models": [
            {"name": "claude-sonnet-4-6", "targets": [{"upstream": "fake"}]},
            {"name": "claude-haiku-4-5-20251001", "targets": [{"upstream": "fake", "model": "upstream-haiku"}]},
            {"name": "claude-opus-4-6", "targets": [{"upstream": "dead"}]},
            {"name": "mock-model", "targets": [{"upstream": "mock"}]},
        ],
    }
    return parse_config(raw, "tests/conftest.py", {})


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    """A migrated SQLite store in a fresh directory (the directory is created, as serve does)."""
    s = open_store(f"sqlite:///{tmp_path / 'data' / 'tollway.db'}")
    await s.migrate()
    yield s
    await s.close()


# -- PostgreSQL ------------------------------------------------------------------------------------------
# A server reached through POSTGRES_ENV (default: the local one of the dev machines and CI). Each test session
# gets a database of its own, made from it and dropped at the end, so sessions running side by side (or a
# developer's real data) never meet.

POSTGRES_ENV = "TOLLWAY_TEST_POSTGRES_URL"
POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
# The session's database takes the collation and time zone most unlike SQLite's (text compared by bytes,
# times in UTC), so a query whose answer would depend on them differs between the backends and fails a test.
_PG_COLLATION = "TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
_PG_TIMEZONE = "Pacific/Kiritimati"  # UTC+14: most dates differ from UTC's


def _in_thread(work: Coroutine[Any, Any, Any]) -> Any:
    # A loop of its own in another thread: a session fixture runs outside the tests' loops, and must not
    # leave or replace an event loop in this thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _pg_admin(url: str, *statements: str) -> None:
    engine = create_async_engine(async_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool,
                                 connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def _pg_create(server: str, name: str) -> None:
    try:
        await _pg_admin(server, f"CREATE DATABASE {name} {_PG_COLLATION}")
    except DBAPIError:  # an older server or one without ICU: its default collation then
        await _pg_admin(server, f"CREATE DATABASE {name}")
    await _pg_admin(server, f"ALTER DATABASE {name} SET timezone TO '{_PG_TIMEZONE}'")


def pg_database_url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server's maintenance database. Unreachable, the tests that need it
    skip, except under CI (which has one): there they fail."""
    server = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
    try:
        _in_thread(_pg_admin(server, "SELECT 1"))
    except (OSError, DBAPIError) as exc:  # a timeout is an OSError too
        problem = f"PostgreSQL at {display_url(server)} is unreachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{problem}; CI must have it (set {POSTGRES_ENV} if it is elsewhere)")
        pytest.skip(f"{problem}; set {POSTGRES_ENV} to run the PostgreSQL tests")
    return server


class PostgresDatabases:
    """Throwaway databases on the test server, each dropped at the end of the session."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.names: list[str] = []

    def create(self, label: str) -> str:
        name = f"tollway_test_{label}_{secrets.token_hex(4)}"
        _in_thread(_pg_create(self.server, name))
        self.names.append(name)
        return pg_database_url(self.server, name)

    def create_migrated(self, label: str) -> str:
        """A new database brought to the current schema, as `tollway migrate` does before replicas start."""
        url = self.create(label)

        async def migrate() -> None:
            store = open_store(url)
            try:
                await store.migrate()
            finally:
                await store.close()

        _in_thread(migrate())
        return url

    def drop_all(self) -> None:
        for name in self.names:
            _in_thread(_pg_admin(self.server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: str) -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_server)
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres_databases: PostgresDatabases) -> str:
    """One database for the session's tests, migrated once; tests empty it rather than make their own."""
    url = postgres_databases.create("session")

    async def migrate() -> None:
        s = open_store(url)
        try:
            await s.migrate()
        finally:
            await s.close()

    _in_thread(migrate())
    return url


_TABLES = ", ".join(t.name for t in metadata.sorted_tables)


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[SQLStore]:
    """A store on the session's PostgreSQL database, emptied first (identity counters too, so ids match
    SQLite's in a fresh file)."""
    s = open_store(postgres_url)
    async with s.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
    yield s
    await s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> SQLStore:
    """The store contract's fixture: every test that takes it runs on each backend."""
    backend: SQLStore = request.getfixturevalue(f"{request.param}_store")
    return backend


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.server.close()


@pytest.fixture(scope="session")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(gateway_config(upstream.url, tmp_path_factory.mktemp("gw") / "tollway.db"))
    yield gw
    gw.server.close()


@pytest.fixture(scope="session")
def secret(gateway: Gateway) -> str:
    return gateway.create_key("main")


@pytest.fixture()
def client(gateway: Gateway, secret: str) -> anthropic.Anthropic:
    return gateway.client(secret)


# The Redis server for tests: ``$TOLLWAY_TEST_REDIS_URL`` (default: the local one). Each test gets keys of its own
# under a fresh prefix, deleted afterwards. Without a reachable Redis those tests skip and say why, except
# under CI (``$CI`` set), where they fail: there a missing Redis is a broken setup, not a choice.
REDIS_URL = os.environ.get("TOLLWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@functools.cache
def redis_problem() -> str | None:
    """Why the test Redis cannot be used, or None when it answers. Asked once per run."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    return None


@pytest.fixture
def redis_url() -> str:
    problem = redis_problem()
    if problem is not None:
        message = f"Redis at {REDIS_URL} is unreachable ({problem}); set TOLLWAY_TEST_REDIS_URL or start redis-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"tollway-test:{uuid.uuid4().hex}:"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every Redis key under ``prefix``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
