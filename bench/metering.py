"""The CPU that metering and limits add to one request, measured alone: no HTTP, no upstream.

The HTTP benchmark (`run.py`, rows ``tollway`` and ``tollway-limited``) measures the same difference end to
end, but on this shared machine its rounds spread by a quarter either way. Here each step a limited request
takes runs in a loop on the real objects (the in-memory limiter, the wallet, the usage ledger writing to a
real SQLite file), and the process CPU is read around it: a steadier figure for the same cost.

    .venv/bin/python bench/metering.py [--requests 20000]

Prints, per request: the usage row alone (what every request pays), then rate limits (admit, headers,
settle), then money (reserve, settle, two ledger entries written), and writes bench/results/metering.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tollway.accounting.funds import Funds
from tollway.accounting.keys import new_account, new_key
from tollway.accounting.ledger import UsageLedger
from tollway.accounting.pricing import cost_nanousd
from tollway.limits import LimitRules, MemoryLimiter, policy
from tollway.protocol.catalog import LIST_PRICES
from tollway.protocol.usage import Usage
from tollway.store import Budget, KeyRecord, UsageRecord, open_store

RESULTS = Path(__file__).resolve().parent / "results" / "metering.json"
MODEL = "claude-sonnet-4-6"
PRICES = LIST_PRICES[MODEL]
BODY_SIZE = 400
MAX_TOKENS = 1024
USAGE = Usage(input_tokens=31, output_tokens=7, cache_creation_input_tokens=12, cache_read_input_tokens=1024,
              cache_creation_5m=8, cache_creation_1h=4)
BATCH = 500
"""Rows per flush, about what 0.5 s of traffic gives at 1,000 requests a second."""


def row(request_id: str, key: KeyRecord) -> UsageRecord:
    return UsageRecord(request_id=request_id, created_at=datetime.now(UTC), key_id=key.id, endpoint="messages",
                       model=MODEL, upstream="fake", upstream_model=MODEL, stream=False, status=200, error_type=None,
                       input_tokens=31, output_tokens=7, cache_creation_input_tokens=12,
                       cache_read_input_tokens=1024, cache_creation_5m=8, cache_creation_1h=4, latency_ms=1.0,
                       ttfb_ms=0.5, cost_nanousd=cost_nanousd(PRICES, USAGE))


async def cpu_per_request(first: int, n: int, step: Callable[[int], Awaitable[None]], ledger: UsageLedger) -> float:
    started = time.process_time()
    for i in range(first, first + n):
        await step(i)
        if i % BATCH == BATCH - 1:
            await ledger.flush()
    await ledger.flush()
    return (time.process_time() - started) / n * 1e6


async def main(n: int) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="tollway-metering-")
    store = open_store(f"sqlite:///{folder}/metering.db")
    await store.migrate()
    ledger = UsageLedger(store, flush_interval=3600)
    funds = Funds(store, ledger.entry, refresh_interval=3600)
    limiter, rules = MemoryLimiter(), LimitRules()
    keys = []
    unlimited: tuple[int | None, ...] = (None, None, None, None)
    for name, (rpm, itpm, otpm, concurrency), budget in (
            ("plain", unlimited, Budget()),
            ("limited", (10**8, 2 * 10**9, 2 * 10**9, 10**5), Budget()),
            ("paying", unlimited, Budget(prepaid=True, cap_nanousd=10**15, cap_period="day"))):
        record, _ = new_key(name, None)
        account = new_account(name, record.created_at)
        record = dataclasses.replace(record, account_id=account.id, budget=budget, rpm=rpm, itpm=itpm, otpm=otpm,
                                     max_concurrency=concurrency)
        await store.insert_key(record, account)
        if budget.prepaid:
            await store.topup(record.id, 10**15)
        keys.append(record)
    plain, limited, paying = keys
    await funds.start()

    async def bare(i: int) -> None:
        ledger.record(row(f"plain_{i}", plain))

    async def with_limits(i: int) -> None:
        admission = await policy.admit(limiter, limited, BODY_SIZE, MAX_TOKENS, model=MODEL, rules=rules)
        await policy.settle(limiter, admission, 31 + 12, 7)
        ledger.record(row(f"limited_{i}", limited))

    async def with_money(i: int) -> None:
        request_id = f"paying_{i}"
        hold = await funds.reserve(request_id, paying, PRICES, BODY_SIZE, False, MAX_TOKENS, 200_000)
        record = row(request_id, paying)
        assert hold is not None and record.cost_nanousd is not None
        await funds.settle(hold, record.cost_nanousd)
        ledger.record(record)

    # Alternating rounds, medians kept: the same precaution as run.py's --rounds.
    results: dict[str, list[float]] = {"usage row only": [], "rate limits": [], "balance and cap": []}
    steps: dict[str, Callable[[int], Awaitable[None]]] = {
        "usage row only": bare, "rate limits": with_limits, "balance and cap": with_money}
    for r in range(5):
        for label, step in steps.items():
            results[label].append(await cpu_per_request(r * n, n, step, ledger))
    await funds.close()
    await store.close()
    return {label: sorted(values)[len(values) // 2] for label, values in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round (default 20000)")
    args = parser.parse_args()
    figures = asyncio.run(main(args.requests))
    base = figures["usage row only"]
    for label, value in figures.items():
        extra = "" if label == "usage row only" else f"   (+{value - base:.1f} over the row alone)"
        print(f"{label:16} {value:7.1f} us CPU per request{extra}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps({"requests_per_round": args.requests, "cpu_us_per_request": figures},
                                     option=orjson.OPT_INDENT_2) + b"\n")
