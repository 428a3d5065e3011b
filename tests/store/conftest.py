from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PostgresDatabases


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage.url of a database Tollway never touched, on each backend. On PostgreSQL it is a database of
    its own (the session's shared one is migrated already), which costs a CREATE DATABASE: only the tests
    about migrations use it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases.create("empty")
