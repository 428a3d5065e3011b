"""Replicas as real processes on loopback ports, sharing one PostgreSQL database and one Redis; and this
machine's PostgreSQL and Redis stopped and started again.

Each `Cluster` has a fresh database (migrated with ``tollway migrate``, as an operator does before the first
start) and a Redis prefix of its own. Replicas are ``tollway serve`` processes with the same config file on
different ports, relaying to the session's fake Anthropic upstream (running in this process, reached over
loopback like any upstream). Their logs go to files that a failing test prints.

`Services` stops the machine's PostgreSQL or Redis for the length of a ``with`` block and always starts it again,
by the commands of the machine's notes, waiting until it answers. Other test runs on this machine use the same
servers, so each stop holds an exclusive lock on ``/tmp/tollway-services.lock`` until the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from sqlalchemy.exc import DBAPIError

from tests.conftest import (
    POSTGRES_DEFAULT,
    POSTGRES_ENV,
    PostgresDatabases,
    Upstream,
    _in_thread,
    _pg_admin,
    delete_prefix,
)
from tests.limits.conftest import REDIS_URL, redis_problem
from tollway.accounting.keys import new_account, new_key
from tollway.store import LedgerEntry, SQLStore, UsageRecord, open_store

REPO = Path(__file__).resolve().parents[2]
LOCK_PATH = Path("/tmp/tollway-services.lock")
ADMIN_TOKEN = "cluster-admin-" + secrets.token_hex(8)
BODY: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}]}
T = TypeVar("T")

# The machine's own servers (see the env notes): how to stop them, and how to start them again.
PG_VERSION = max(os.listdir("/etc/postgresql"), default="") if Path("/etc/postgresql").is_dir() else ""
PG_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main"]
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
               "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]
REDIS_STOP = ["redis-cli", "-p", "6379", "shutdown", "nosave"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # In the child before exec: should pytest itself be killed, its replicas do not outlive it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tollway_command() -> list[str]:
    script = REPO / ".venv" / "bin" / "tollway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tollway"]


class Replica:
    """One ``tollway serve`` process."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*tollway_command(), "serve", "--config", str(self.config), "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.config.parent,
                start_new_session=True, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise AssertionError(f"{self.name} exited while starting:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within a few seconds."""
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.wait(5)

    def healthz(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/healthz", timeout=5).json()
        return body

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"


def _run_store(url: str, work: Callable[[SQLStore], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        store = open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    result: T = _in_thread(run())
    return result


class Cluster:
    """Replicas on one database and one Redis prefix, and what the test reads back from them."""

    def __init__(self, directory: Path, db_url: str, redis_url: str, prefix: str, upstream_url: str) -> None:
        self.dir = directory
        self.db_url = db_url
        self.redis_url = redis_url
        self.prefix = prefix
        self.upstream_url = upstream_url
        self.config = directory / "tollway.toml"
        self.replicas: list[Replica] = []

    def write_config(self, *, flush_interval: float = 0.2, key_refresh_interval: float = 0.5,
                     shutdown_timeout: float = 20.0, retry_delay: float = 0.5) -> None:
        self.flush_interval = flush_interval
        self.config.write_text(f"""[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = {shutdown_timeout}

[storage]
url = "{self.db_url}"
flush_interval = {flush_interval}
key_refresh_interval = {key_refresh_interval}

[limits]
url = "{self.redis_url}"
prefix = "{self.prefix}"
timeout = 0.5
retry_delay = {retry_delay}

[admin]
token = "{ADMIN_TOKEN}"

[[upstreams]]
name = "fake"
kind = "anthropic"
base_url = "{self.upstream_url}"
api_keys = ["upstream-secret"]

[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "fake" }}]
""")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``tollway ARGS --config FILE``, which must succeed."""
        argv = [*tollway_command(), *args, "--config", str(self.config)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)
        assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout}\n{done.stderr}"
        return done

    def start(self, n: int) -> list[Replica]:
        """Start ``n`` more replicas at once and wait for all of them."""
        names = [f"replica-{len(self.replicas) + i}" for i in range(n)]
        new = [Replica(name, self.config, self.dir / f"{name}.log") for name in names]
        self.replicas += new
        for replica in new:
            replica.start()
        for replica in new:
            replica.wait_ready()
        return new

    def restart(self, replica: Replica) -> None:
        replica.start()
        replica.wait_ready()

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def logs(self) -> str:
        return "\n".join(f"---- {r.name} ({r.url}) ----\n{r.log_tail()}" for r in self.replicas)

    # -- keys, through the admin API of a replica ------------------------------------------------------------

    def create_key(self, name: str, via: Replica | None = None, **fields: Any) -> tuple[str, str]:
        """A new key (its id and secret), made by a replica's admin API."""
        replica = via or self.replicas[0]
        r = httpx.post(f"{replica.url}/admin/keys", json={"name": name, **fields},
                       headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        assert r.status_code == 201, r.text
        body = r.json()
        return str(body["id"]), str(body["secret"])

    def add_key(self, name: str, *, rpm: int | None = None, max_concurrency: int | None = None) -> tuple[str, str]:
        """A new key (its id and secret) with these rate limits, written straight to the database (faster than
        the CLI, which `cli_key` runs)."""
        record, secret = new_key(name, None)
        account = new_account(name, record.created_at)
        record = dataclasses.replace(record, account_id=account.id, rpm=rpm, max_concurrency=max_concurrency)

        async def insert(store: SQLStore) -> None:
            await store.insert_key(record, account)

        _run_store(self.db_url, insert)
        return record.id, secret

    def cli_key(self, name: str, *flags: str) -> tuple[str, str]:
        """A new key (its id and secret), made by ``tollway keys create``."""
        out = self.cli("keys", "create", "--name", name, *flags).stdout.splitlines()
        key_id = next(line.split()[2] for line in out if line.startswith("created key "))
        return key_id, out[-1].strip()

    # -- the shared database, read from this process ---------------------------------------------------------

    def usage_rows(self) -> list[UsageRecord]:
        async def rows(store: SQLStore) -> list[UsageRecord]:
            return await store.usage_rows(limit=1_000_000)

        return _run_store(self.db_url, rows)

    def balances(self) -> dict[str, int]:
        async def balances(store: SQLStore) -> dict[str, int]:
            return (await store.balances())[0]

        return _run_store(self.db_url, balances)

    def ledger(self) -> list[LedgerEntry]:
        async def entries(store: SQLStore) -> list[LedgerEntry]:
            return [e for _, e in await store.ledger_entries()]

        return _run_store(self.db_url, entries)

    def open_reserves(self) -> list[LedgerEntry]:
        return _run_store(self.db_url, lambda store: store.open_reserves())

    def wait_for_settled(self, replicas: Sequence[Replica], sent: Sequence[Sent],
                         timeout: float = 15.0) -> dict[str, list[UsageRecord]]:
        """Every usage row by request id, once these (live) replicas have nothing left to write and every request
        they answered in full is stored."""
        names = {r.name for r in replicas}
        deadline = time.monotonic() + timeout
        while any(r.healthz()["usage_pending"] for r in replicas):
            assert time.monotonic() < deadline, "usage still pending:\n" + self.logs()
            time.sleep(0.05)
        wanted = [str(s.request_id) for s in sent if s.complete and s.replica in names]
        return self.wait_for_rows(wanted, max(deadline - time.monotonic(), 1.0))

    def wait_for_rows(self, request_ids: Sequence[str], timeout: float = 10.0) -> dict[str, list[UsageRecord]]:
        """Every usage row, by request id, once all of ``request_ids`` are stored (or the time is up)."""
        deadline = time.monotonic() + timeout
        while True:
            by_id: dict[str, list[UsageRecord]] = {}
            for row in self.usage_rows():
                by_id.setdefault(row.request_id, []).append(row)
            if all(r in by_id for r in request_ids) or time.monotonic() > deadline:
                return by_id
            time.sleep(0.1)


def _redis_delete(prefix: str) -> None:
    with contextlib.suppress(redis.RedisError):
        delete_prefix(REDIS_URL, prefix)


@pytest.fixture
def cluster(upstream: Upstream, postgres_databases: PostgresDatabases, tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A fresh database migrated by ``tollway migrate``, a Redis prefix, and no replica yet (the test starts
    them); every replica is stopped at the end, and its log printed if the test failed."""
    problem = redis_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable ({problem})")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({problem}); start redis-server")
    url = postgres_databases.create("cluster")
    prefix = f"tollway-test:{secrets.token_hex(8)}:"
    c = Cluster(tmp_path, url, REDIS_URL, prefix, upstream.url)
    c.write_config()
    c.cli("migrate")
    try:
        yield c
    finally:
        c.stop_all()
        _redis_delete(prefix)
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(c.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # The call's report kept on the test, so the fixture's teardown knows whether to print the replicas' logs.
    report: pytest.TestReport = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


# -- this machine's PostgreSQL and Redis, stopped and started again -------------------------------------------


def _postgres_answers() -> bool:
    try:
        _in_thread(_pg_admin(POSTGRES_DEFAULT, "SELECT 1"))
    except (OSError, DBAPIError):
        return False
    return True


def _redis_answers() -> bool:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:.0f} s")
        time.sleep(0.1)


def _run(argv: Sequence[str]) -> None:
    subprocess.run(argv, capture_output=True, timeout=60, check=False)


class Services:
    """Stops this machine's PostgreSQL or Redis for a ``with`` block, under the lock other test runs share."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def postgres_down(self) -> Iterator[None]:
        with self._locked():
            try:
                _run([*PG_CTL, "stop", "-m", "fast"])
                _wait_until(lambda: not _postgres_answers(), "PostgreSQL still answers after its stop", 30)
                yield
            finally:
                _run([*PG_CTL, "start"])
                _wait_until(_postgres_answers, "PostgreSQL does not answer after its start", 60)

    @contextlib.contextmanager
    def redis_down(self) -> Iterator[None]:
        with self._locked():
            try:
                _run(REDIS_STOP)
                _wait_until(lambda: not _redis_answers(), "Redis still answers after its shutdown", 30)
                yield
            finally:
                if not _redis_answers():
                    _run(REDIS_START)
                _wait_until(_redis_answers, "Redis does not answer after its start", 30)


@pytest.fixture
def services(postgres_databases: PostgresDatabases) -> Services:
    """Only where the tests run on this machine's own servers, with the tools to stop and start them; elsewhere
    the fault tests skip and say why (under CI, which has them, they fail)."""
    problem = None
    if os.environ.get(POSTGRES_ENV) or os.environ.get("TOLLWAY_TEST_REDIS_URL"):
        problem = "the fault tests stop and start this machine's own PostgreSQL and Redis, not servers elsewhere"
    missing = [tool for tool in ("pg_ctlcluster", "redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing or not PG_VERSION:
        problem = f"cannot stop and start this machine's servers: {', '.join(missing) or 'no /etc/postgresql'}"
    if problem is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(problem)
        pytest.skip(problem)
    return Services()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    _wait_until(check, what, timeout)


# -- clients -------------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request as its client saw it."""

    replica: str
    key: str
    stream: bool
    started: float
    """Monotonic, in this process."""
    finished: float = 0.0
    """When the whole answer had arrived, or the request failed."""
    status: int | None = None
    """None: no answer (the connection was refused or cut before the status line)."""
    request_id: str | None = None
    complete: bool = False
    """The whole answer arrived: a body, or a stream up to its message_stop event."""
    error: str | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Traffic:
    """Every request sent in a test, as the clients saw it."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5),
                                        limits=httpx.Limits(max_connections=200, max_keepalive_connections=0))

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, replica: Replica, secret: str, key: str, *, stream: bool = False,
                   scenario: str | None = None, endpoint: str = "messages", max_tokens: int = 16) -> Sent:
        body = {**BODY, "max_tokens": max_tokens, **({"stream": True} if stream else {})}
        headers = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
        if scenario is not None:
            headers["x-fake-scenario"] = scenario
        path = "/v1/messages" if endpoint == "messages" else "/v1/messages/count_tokens"
        sent = Sent(replica.name, key, stream, time.monotonic())
        self.sent.append(sent)
        try:
            async with self.client.stream("POST", replica.url + path, json=body, headers=headers) as r:
                sent.status, sent.request_id, sent.headers = r.status_code, r.headers.get("request-id"), dict(r.headers)
                sent.body = await r.aread()
            sent.complete = not stream or r.status_code != 200 or b"event: message_stop" in sent.body
        except httpx.TransportError as error:
            sent.error = f"{type(error).__name__}: {error}"
        sent.finished = time.monotonic()
        return sent

    async def send_retrying(self, replica: Replica, secret: str, key: str, *, attempts: int = 20,
                            **kwargs: Any) -> Sent:
        """As an SDK does: a 529 is tried again after its retry-after (each try is a request of its own)."""
        for _ in range(attempts - 1):
            sent = await self.send(replica, secret, key, **kwargs)
            if sent.status != 529:
                return sent
            await asyncio.sleep(min(float(sent.headers.get("retry-after", "1")), 3.0))
        return await self.send(replica, secret, key, **kwargs)

    def by(self, *, key: str | None = None, replica: str | None = None) -> list[Sent]:
        return [s for s in self.sent if (key is None or s.key == key) and (replica is None or s.replica == replica)]

    def answered(self) -> list[Sent]:
        """Requests with a complete answer (any status): each must have exactly one usage row."""
        return [s for s in self.sent if s.complete]


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)

