"""storage.url: which schemes open which driver, and the pool a PostgreSQL store gets."""

from __future__ import annotations

import pytest
from sqlalchemy.pool import QueuePool

from tollway.config import StorageConfig
from tollway.errors import ConfigError
from tollway.store import SQLStore, open_store
from tollway.store.sql import async_url, display_url


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///./tollway.db", "sqlite+aiosqlite:///./tollway.db"),
    ("sqlite:////var/lib/tollway/t.db", "sqlite+aiosqlite:////var/lib/tollway/t.db"),
    ("postgresql://db.internal/tollway", "postgresql+asyncpg://db.internal/tollway"),
    ("postgres://db.internal/tollway", "postgresql+asyncpg://db.internal/tollway"),
    ("postgresql://tollway:s%40cret@10.0.0.5:6432/billing",
     "postgresql+asyncpg://tollway:s%40cret@10.0.0.5:6432/billing"),
    # libpq's sslmode is asyncpg's ssl
    ("postgresql://db/tollway?sslmode=require", "postgresql+asyncpg://db/tollway?ssl=require"),
    ("postgres://db/tollway?sslmode=verify-full&timeout=5", "postgresql+asyncpg://db/tollway?ssl=verify-full&timeout=5"),
])
def test_async_url(url: str, expected: str) -> None:
    assert async_url(url) == expected


@pytest.mark.parametrize(("url", "shown"), [
    ("mysql://root:hunter2@db/tollway", "'mysql://'"),
    ("postgresql+psycopg://root:hunter2@db/tollway", "'postgresql+psycopg://'"),
    ("sqlite://relative.db", "'sqlite://'"),
    ("./tollway.db", "'./tollway.db'"),
])
def test_other_schemes_are_refused_naming_the_ones_accepted(url: str, shown: str) -> None:
    with pytest.raises(ConfigError) as refused:
        async_url(url)
    assert str(refused.value) == (f"storage.url: must start with sqlite:///, postgresql://, postgres:// "
                                  f"(got {shown})")
    assert "hunter2" not in str(refused.value)


def test_display_url_masks_a_postgres_password() -> None:
    assert display_url("postgresql://tollway:hunter2@db:5432/t") == "postgresql://tollway:***@db:5432/t"
    assert display_url("postgres://db/t") == "postgres://db/t"
    assert display_url("sqlite:///./tollway.db") == "sqlite:///./tollway.db"


async def test_a_postgres_store_has_the_configured_pool() -> None:
    # Opening makes no connection, so no server is needed to see the pool.
    store = open_store(StorageConfig(url="postgresql://db.invalid/t", pool_size=3, max_overflow=7))
    try:
        assert store.dialect == "postgresql"
        pool = store.engine.pool
        assert isinstance(pool, QueuePool)
        assert (pool.size(), pool._max_overflow) == (3, 7)
    finally:
        await store.close()
    default = SQLStore.open("postgres://db.invalid/t")
    try:
        assert (default.engine.pool.size(), default.engine.pool._max_overflow) == (10, 5)  # type: ignore[attr-defined]
    finally:
        await default.close()


async def test_sqlite_ignores_the_pool_settings(tmp_path: object) -> None:
    store = open_store(StorageConfig(url=f"sqlite:///{tmp_path}/p.db", pool_size=1, max_overflow=0))
    try:
        assert store.dialect == "sqlite"
        await store.migrate()
        assert await store.list_keys() == []
    finally:
        await store.close()
