"""The real ``tollway`` console script, run as a subprocess against a temporary config and SQLite file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tollway.accounting.keys import new_key
from tollway.accounting.pricing import cost_nanousd
from tollway.protocol.catalog import LIST_PRICES
from tollway.protocol.usage import Usage
from tollway.store import UsageRecord, open_store

TOLLWAY = Path(sys.executable).parent / "tollway"

CONFIG = """
[storage]
url = "sqlite:///{db}"

[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "mock" }}]
"""


class CLI:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.db = tmp_path / "data" / "cli.db"
        self.config = tmp_path / "tollway.toml"
        self.config.write_text(CONFIG.format(db=self.db), encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if k not in ("TOLLWAY_CONFIG", "ANTHROPIC_API_KEY")}

    def run(self, *args: str, config: Path | None = None, code: int = 0) -> subprocess.CompletedProcess[str]:
        # --config belongs to the subcommand: "tollway keys list --config X", "tollway usage --config X".
        split = 2 if args[0] == "keys" else 1
        argv = [str(TOLLWAY), *args[:split], "--config", str(config or self.config), *args[split:]]
        # The working directory holds no tollway.toml of its own: only --config is read.
        cwd = self.tmp / "cwd"
        cwd.mkdir(exist_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=self.env, cwd=cwd, check=False)
        assert done.returncode == code, (argv, done.returncode, done.stdout, done.stderr)
        return done

    def create(self, name: str, *models: str) -> tuple[str, str]:
        args = ["keys", "create", "--name", name]
        if models:
            args += ["--models", *models]
        out = self.run(*args).stdout.splitlines()
        match = re.match(r"created key (key_[0-9a-f]+) ", out[0])
        assert match is not None, out
        return match.group(1), out[-1]


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    assert TOLLWAY.exists(), f"console script not installed at {TOLLWAY}"
    return CLI(tmp_path)


def test_keys_create_list_revoke(cli: CLI) -> None:
    assert cli.run("keys", "list").stdout == ""  # a fresh database: no keys, no header

    done = cli.run("keys", "create", "--name", "x")
    lines = done.stdout.splitlines()
    secret = lines[-1]  # the secret is the last line, alone, for scripts to take
    assert secret.startswith("tw-")
    assert re.fullmatch(r"tw-[A-Za-z0-9_-]{43}", secret)
    match = re.fullmatch(r"created key (key_[0-9a-f]{16}) \(x\) for all models", lines[0])
    assert match is not None, lines
    first_id = match.group(1)
    assert sum(secret in line for line in lines) == 1  # shown once
    assert done.stderr == ""

    second_id, second_secret = cli.create("second key", "claude-sonnet-*", "claude-haiku-4-5*")
    lines = cli.run("keys", "list").stdout.splitlines()
    assert len(lines) == 2  # one line a key
    fields = [line.split("\t") for line in lines]
    assert [f[:2] for f in fields] == [[first_id, "x"], [second_id, "second key"]]  # id first, then name
    assert all("\tactive\t" in line for line in lines)
    assert "\t*\t" in lines[0]  # every model
    assert "claude-sonnet-*,claude-haiku-4-5*" in fields[1]
    assert second_secret[:7] in fields[1][2] and second_secret[-4:] in fields[1][2]  # the hint
    assert secret not in lines[0] and second_secret not in lines[1]

    # Only hashes reach the database.
    with sqlite3.connect(cli.db) as conn:
        stored = dict(conn.execute("SELECT id, secret_hash FROM keys").fetchall())
    assert stored == {first_id: hashlib.sha256(secret.encode()).hexdigest(),
                      second_id: hashlib.sha256(second_secret.encode()).hexdigest()}
    raw = b"".join(f.read_bytes() for f in cli.db.parent.iterdir())
    assert secret.encode() not in raw and second_secret.encode() not in raw

    done = cli.run("keys", "revoke", first_id)
    assert done.stdout.strip() == f"revoked {first_id}"
    lines = cli.run("keys", "list").stdout.splitlines()
    assert lines[0].startswith(first_id + "\t")
    assert re.search(r"\trevoked \d{4}-\d\d-\d\d \d\d:\d\d\t", lines[0])
    assert "\tactive\t" in lines[1]

    again = cli.run("keys", "revoke", first_id, code=1)
    assert again.stdout == ""
    assert f"no active key with id {first_id}" in again.stderr


async def fill_usage(db: Path, now: datetime) -> str:
    """Keys alice and bob, and four usage rows of alice's; returns alice's id."""
    store = open_store(f"sqlite:///{db}")
    await store.migrate()
    alice, _ = new_key("alice", None)
    await store.insert_key(alice)
    await store.insert_key(new_key("bob", None)[0])

    def row(rid: str, model: str, at: datetime, inp: int, out: int, status: int = 200) -> UsageRecord:
        prices = LIST_PRICES.get(model)
        cost = None if prices is None else cost_nanousd(prices, Usage(input_tokens=inp, output_tokens=out))
        return UsageRecord(request_id=rid, created_at=at, key_id=alice.id, endpoint="messages", model=model,
                           upstream="mock", upstream_model=None, stream=False, status=status, error_type=None,
                           input_tokens=inp, output_tokens=out, cost_nanousd=cost)

    await store.insert_usage([
        row("r1", "claude-sonnet-4-6", now - timedelta(hours=1), 1000, 2000),
        row("r2", "claude-sonnet-4-6", now - timedelta(hours=2), 0, 0, status=529),
        row("r3", "claude-haiku-4-5-20251001", now - timedelta(days=3), 1_000_000, 0),
        row("r4", "mock-model", now - timedelta(minutes=5), 10, 10),
    ])
    await store.close()
    return alice.id


def table(stdout: str) -> tuple[list[str], list[list[str]], str]:
    lines = stdout.splitlines()
    return lines[0].split(), [re.split(r"\s{2,}", line.strip()) for line in lines[1:-1]], lines[-1]


async def test_usage_table_and_filters(cli: CLI) -> None:
    # An empty ledger: the header and a zero total.
    header, rows, total = table(cli.run("usage").stdout)
    assert header == ["key", "model", "requests", "errors", "input", "output", "cache", "write", "cache", "read",
                      "cost", "USD"]
    assert rows == []
    assert total == "total cost USD: 0.000000"

    alice_id = await fill_usage(cli.db, datetime.now(UTC))
    header, rows, total = table(cli.run("usage").stdout)
    assert header[:2] == ["key", "model"]
    assert len(rows) == 3  # one line per key and model
    by_model = {r[1]: r for r in rows}
    # sonnet 4.6: 1,000 in at $3/M + 2,000 out at $15/M = 0.003 + 0.030; two requests, one an error.
    assert by_model["claude-sonnet-4-6"] == ["alice", "claude-sonnet-4-6", "2", "1", "1000", "2000", "0", "0",
                                             "0.033000"]
    assert by_model["claude-haiku-4-5-20251001"][-1] == "1.000000"  # 1M in at $1/M
    assert by_model["mock-model"][-1] == "-"  # no list price
    assert total == "total cost USD: 1.033000"

    _, rows, total = table(cli.run("usage", "--since", "1d").stdout)
    assert sorted(r[1] for r in rows) == ["claude-sonnet-4-6", "mock-model"]
    assert total == "total cost USD: 0.033000"

    _, rows, total = table(cli.run("usage", "--key", "bob").stdout)
    assert rows == []
    assert total == "total cost USD: 0.000000"

    _, rows, _ = table(cli.run("usage", "--key", alice_id, "--since", "30m").stdout)
    assert [r[:2] for r in rows] == [["alice", "mock-model"]]


def test_usage_bad_since_is_a_usage_error(cli: CLI) -> None:
    done = cli.run("usage", "--since", "yesterday", code=2)
    assert "not a duration" in done.stderr


def test_migrate(cli: CLI) -> None:
    done = cli.run("migrate")
    assert done.stdout.startswith("schema is up to date")
    assert cli.db.exists()


def test_bad_config_exits_2_naming_file_and_key(cli: CLI) -> None:
    bad = cli.tmp / "bad.toml"
    bad.write_text(CONFIG.format(db=cli.db) + '\n[server]\nport = "eighty"\n', encoding="utf-8")
    done = cli.run("keys", "list", config=bad, code=2)
    assert done.stdout == ""
    assert f"{bad}: server.port: must be an integer, not str" in done.stderr
    assert not cli.db.exists()  # nothing was opened


def test_missing_env_var_exits_2_naming_the_key(cli: CLI) -> None:
    bad = cli.tmp / "env.toml"
    bad.write_text(CONFIG.format(db=cli.db) + '\n[[upstreams]]\nname = "a"\nkind = "anthropic"\n'
                   'api_keys = ["${TOLLWAY_TEST_UNSET_VAR}"]\n', encoding="utf-8")
    cli.env.pop("TOLLWAY_TEST_UNSET_VAR", None)
    done = cli.run("usage", config=bad, code=2)
    assert f"{bad}: upstreams[1].api_keys[0]: environment variable TOLLWAY_TEST_UNSET_VAR is not set" in done.stderr


def test_missing_config_file_exits_2(cli: CLI) -> None:
    missing = cli.tmp / "nope.toml"
    done = cli.run("keys", "list", config=missing, code=2)
    assert f"{missing}: file not found" in done.stderr


def test_keys_limits_create_update_and_list(cli: CLI) -> None:
    out = cli.run("keys", "create", "--name", "limited", "--rpm", "50", "--otpm", "8000").stdout.splitlines()
    key_id = out[0].split()[2]
    line = cli.run("keys", "list").stdout.splitlines()[0]
    assert "\trpm=50,otpm=8000\t" in line
    done = cli.run("keys", "update", key_id, "--rpm", "0", "--itpm", "30000", "--max-concurrency", "4")
    assert done.stdout.strip() == f"updated {key_id}: rpm=none, itpm=30000, max_concurrency=4"
    line = cli.run("keys", "list").stdout.splitlines()[0]
    assert "\titpm=30000,otpm=8000,max_concurrency=4\t" in line
    with sqlite3.connect(cli.db) as conn:
        assert conn.execute("SELECT rpm, itpm, otpm, max_concurrency FROM keys").fetchone() == (None, 30000, 8000, 4)
    cli.run("keys", "update", "key_nope", "--rpm", "1", code=1)
    cli.run("keys", "update", key_id, code=2)


async def test_usage_by_upstream_and_day_as_json_and_csv(cli: CLI) -> None:
    now = datetime.now(UTC)
    await fill_usage(cli.db, now)
    records = json.loads(cli.run("usage", "--by", "day,model", "--format", "json").stdout)
    days = {(r["day"], r["model"]): r for r in records}
    def day(ago: timedelta) -> str:
        return (now - ago).strftime("%Y-%m-%d")

    # The rows fill_usage writes, by the UTC day each falls on (two may straddle midnight).
    assert set(days) == {(day(timedelta(hours=1)), "claude-sonnet-4-6"), (day(timedelta(hours=2)), "claude-sonnet-4-6"),
                         (day(timedelta(days=3)), "claude-haiku-4-5-20251001"),
                         (day(timedelta(minutes=5)), "mock-model")}
    sonnet = [r for r in records if r["model"] == "claude-sonnet-4-6"]
    assert sum(r["requests"] for r in sonnet) == 2 and sum(r["errors"] for r in sonnet) == 1
    assert "key" not in records[0]
    by_upstream = json.loads(cli.run("usage", "--by", "upstream", "--format", "json").stdout)
    assert by_upstream == [{"upstream": "mock", "requests": 4, "errors": 1, "input_tokens": 1_001_010,
                            "output_tokens": 2010, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
                            "cache_read_tokens": 0, "cost_usd": "1.033000000"}]
    lines = cli.run("usage", "--by", "key", "--format", "csv").stdout.splitlines()
    assert lines[0].startswith("key,key_id,requests,errors,")
    assert lines[1].startswith("alice,key_") and lines[1].endswith(",1.033000000")
    cli.run("usage", "--by", "week", code=2)
