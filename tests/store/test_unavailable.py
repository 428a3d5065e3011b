"""A database that cannot be reached: every store call raises `StoreUnavailable` (Anthropic's 529, which the SDKs
retry) within the connect timeout, never a raw driver error or a hang; a statement the database refuses keeps
its own error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from tests.store.test_sql_store import key, usage
from tollway.api.errors import error_response
from tollway.store import SQLStore, open_store
from tollway.store.sql import StoreUnavailable, unreachable


@pytest.fixture
async def refused() -> AsyncIterator[SQLStore]:
    """A store on a port where nothing listens (1, on loopback: refused at once)."""
    store = SQLStore.open("postgresql://tollway@127.0.0.1:1/tollway", connect_timeout=2)
    yield store
    await store.close()


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """The URL of a server that takes connections and never says a word, as a database that hangs does."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"postgresql://tollway@127.0.0.1:{port}/tollway"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_every_call_on_an_unreachable_database_raises_store_unavailable(refused: SQLStore) -> None:
    calls = [refused.key_by_hash("0" * 64), refused.keys_changed_since(None), refused.list_keys(),
             refused.insert_usage([usage("req_1", None, "m")]), refused.balances(), refused.revision(),
             refused.insert_key(key("key_1", "one")), refused.usage_summary()]
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            await call
        assert "Connection" in caught.value.cause or "Errno" in caught.value.cause, caught.value.cause


async def test_store_unavailable_is_an_anthropic_overloaded_error_to_retry(refused: SQLStore) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await refused.key_by_hash("0" * 64)
    response = error_response(caught.value, "req_x")
    assert response.status == 529 and response.headers["retry-after"] == "2"
    assert response.headers["request-id"] == "req_x" and "x-should-retry" not in response.headers
    assert response.body is not None and b'"type":"overloaded_error"' in bytes(response.body)  # type: ignore[arg-type]


async def test_a_database_that_never_answers_fails_within_the_connect_timeout(silent: str) -> None:
    store = SQLStore.open(silent, connect_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.key_by_hash("0" * 64)
        assert time.monotonic() - started < 5, "waited on a silent database"
    finally:
        await store.close()


async def test_a_refused_statement_keeps_its_own_error(store: SQLStore) -> None:
    # Not an outage: the admin API turns a duplicate account name into a 400, and a bug stays visible.
    await store.insert_key(key("key_1", "one"))
    with pytest.raises(IntegrityError) as caught:
        await store.insert_key(key("key_1", "again"))
    assert not isinstance(caught.value, StoreUnavailable) and not unreachable(caught.value)


def test_what_counts_as_unreachable() -> None:
    # The database restarting or shutting down, a connection lost, a refused or timed-out connect.
    assert unreachable(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert unreachable(asyncpg.AdminShutdownError("terminating connection due to administrator command"))
    assert unreachable(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert unreachable(asyncpg.TooManyConnectionsError("sorry, too many clients already"))
    assert unreachable(ConnectionRefusedError(111, "Connection refused"))
    assert unreachable(TimeoutError())
    adapted = Exception("adapted")
    adapted.__cause__ = asyncpg.AdminShutdownError("terminating connection")  # as SQLAlchemy's adapter chains it
    assert unreachable(DBAPIError("SELECT 1", None, adapted))
    lost = OperationalError("SELECT 1", None, Exception("gone"), connection_invalidated=True)
    assert unreachable(lost)
    # What the database said no to is not an outage.
    assert not unreachable(asyncpg.UniqueViolationError("duplicate key value"))
    assert not unreachable(OperationalError("SELECT 1", None, Exception("no such table: usage")))
    assert not unreachable(ValueError("a bug"))


async def test_a_pooled_connection_closed_under_the_store_is_replaced_not_failed(postgres_url: str) -> None:
    # After a database restart the pool's connections are dead; pre-ping replaces them (the cluster tests stop
    # the real server): here, the pool's one connection closed under it.
    store = open_store(postgres_url)
    try:
        await store.keys_changed_since(datetime.now(UTC))
        async with store.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.close()  # type: ignore[union-attr]
        assert await store.keys_changed_since(datetime.now(UTC)) == []
    finally:
        await store.close()
