"""``tollway usage``: the table, the filters, JSON and CSV, from usage rows written straight to the store."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cli.conftest import CLI
from tollway.accounting.keys import new_key
from tollway.accounting.pricing import cost_nanousd
from tollway.protocol.catalog import LIST_PRICES
from tollway.protocol.usage import Usage
from tollway.store import UsageRecord, open_store


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
