"""Reaching the database: the driver URL for a ``storage.url``, its display form, and what counts as the
database being out of reach (`StoreUnavailable`, an Anthropic-shaped 529 the SDKs retry)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from tollway.config import storage_url_problem
from tollway.errors import ConfigError, Overloaded

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")  # in tollway.config's STORAGE_URL_PREFIXES too
CONNECT_TIMEOUT = 5.0
"""Seconds a new PostgreSQL connection may take (asyncpg's own default is 60): bounds how long anything waits
on a database that does not answer."""

_SQLITE_OUT_OF_REACH = frozenset({5, 6, 7, 8, 10, 13, 14})
"""SQLite's primary result codes for a database that cannot be written now, rather than one that refused what
was written: BUSY and LOCKED (another writer held on past the timeout), NOMEM, READONLY, IOERR, FULL, CANTOPEN."""


class StoreUnavailable(Overloaded):
    """The database cannot be reached (stopped, restarting, out of connections, not answering). Rendered as
    Anthropic's 529 ``overloaded_error`` with ``retry-after``, which the SDKs and Claude Code retry."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("The gateway's database cannot be reached right now; please retry shortly.",
                         headers={"retry-after": "2"})
        self.cause = f"{type(cause).__name__}: {cause}".splitlines()[0][:300]


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached or the connection was lost, rather than a
    statement it refused (a constraint, a missing table: those are not outages, and keep their type)."""
    import asyncpg  # type: ignore[import-untyped]  # here, on the error path: a SQLite process never loads it

    lost = (OSError, sa_exc.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (StoreUnavailable, *lost)):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        code = getattr(current, "sqlite_errorcode", 0) if isinstance(current, sqlite3.Error) else 0
        if code & 0xFF in _SQLITE_OUT_OF_REACH:
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) and id(orig) not in seen else current.__cause__
    return False


def async_url(url: str) -> str:
    """The SQLAlchemy URL with its asyncio driver for ``storage.url``."""
    if url.startswith(SQLITE_PREFIX):
        return "sqlite+aiosqlite:///" + url.removeprefix(SQLITE_PREFIX)
    if url.startswith(POSTGRES_PREFIXES):
        parsed = make_url(url).set(drivername="postgresql+asyncpg")
        # URLs are often copied from libpq tools, whose sslmode asyncpg calls ssl (same values).
        if "sslmode" in parsed.query:
            mode = parsed.query["sslmode"]
            parsed = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
        return parsed.render_as_string(hide_password=False)
    raise ConfigError(f"storage.url: {storage_url_problem(url)}")


def display_url(url: str) -> str:
    """``storage.url`` fit for a banner or a log line: a PostgreSQL password is masked."""
    if url.startswith(POSTGRES_PREFIXES):
        return make_url(url).render_as_string(hide_password=True)
    return url
