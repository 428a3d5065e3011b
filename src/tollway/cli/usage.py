"""``tollway usage``: requests, tokens and cost from the usage rows, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal

from tollway.cli.common import SubParsers, as_argument
from tollway.money import NANO
from tollway.store import SQLStore
from tollway.usage_report import DEFAULT_GROUPS, parse_groups, parse_since, usage_csv, usage_records


def add_parser(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    usage = sub.add_parser("usage", parents=[common], help="requests, tokens and cost per key and model")
    usage.add_argument("--key", help="a key id or name")
    usage.add_argument("--since", type=as_argument(parse_since), help="24h, 7d, or an ISO date")
    usage.add_argument("--by", type=as_argument(parse_groups), default=DEFAULT_GROUPS,
                       help="comma-separated groups among key, model, upstream, day (default: key,model)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")


async def run(args: argparse.Namespace, store: SQLStore) -> int:
    rows = await store.usage_summary(key=args.key, since=args.since, by=args.by)
    records = usage_records(rows, args.by)
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return 0
    if args.format == "csv":
        sys.stdout.write(usage_csv(records))
        return 0
    groups = [g for g in ("key", "model", "upstream", "day") if g in args.by]
    header = (*groups, "requests", "errors", "input", "output", "cache write", "cache read", "cost USD")
    table = [header]
    total = Decimal(0)
    for r, rec in zip(rows, records, strict=True):
        cost = None if r.cost_nanousd is None else Decimal(r.cost_nanousd) / NANO
        total += cost or 0
        table.append((*(str(rec[g] or "-") for g in groups), str(r.requests), str(r.errors),
                      str(r.input_tokens), str(r.output_tokens), str(r.cache_creation_5m + r.cache_creation_1h),
                      str(r.cache_read_input_tokens), "-" if cost is None else f"{cost:.6f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < len(groups) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    print(f"total cost USD: {total:.6f}")
    return 0
