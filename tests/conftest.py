from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.loop_thread import AppServer
from tollway.accounting.keys import new_key
from tollway.api.app import create_app
from tollway.api.context import SERVICES
from tollway.config import Config, parse_config
from tollway.store import AccountRecord, Budget, SQLStore, UsageRecord, open_store

FIXTURES = Path(__file__).parent / "fixtures"


class Upstream:
    def __init__(self) -> None:
        self.fake = FakeAnthropic()
        self.server = AppServer(self.fake.app(), "fake-anthropic")
        self.url = self.server.url


class Gateway:
    """A real Tollway on a loopback port, with helpers that reach into its store from its own loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = create_app(config)
        self.server = AppServer(self.app, "tollway")
        self.url = self.server.url

    @property
    def services(self) -> Any:
        return self.app[SERVICES]

    def create_key(self, name: str = "test", models: tuple[str, ...] | None = None, *, rpm: int | None = None,
                   itpm: int | None = None, otpm: int | None = None, max_concurrency: int | None = None,
                   budget: Budget | None = None, account: str | None = None) -> str:
        record, secret = new_key(name, models)
        record = dataclasses.replace(record, rpm=rpm, itpm=itpm, otpm=otpm, max_concurrency=max_concurrency,
                                     budget=budget or Budget(), account_id=account)
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
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    """A migrated SQLite store in a fresh directory (the directory is created, as serve does)."""
    s = open_store(f"sqlite:///{tmp_path / 'data' / 'tollway.db'}")
    await s.migrate()
    yield s
    await s.close()


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
