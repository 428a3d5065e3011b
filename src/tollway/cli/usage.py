"""``tollway usage``: requests, tokens and cost from the usage rows, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tollway.cli.common import NANO, SubParsers
from tollway.store import SQLStore
from tollway.store.sql import SUMMARY_GROUPS


def _parse_since(raw: str) -> datetime:
    """``24h``, ``7d``, ``30m`` back from now, or an ISO date or datetime (UTC unless it says)."""
    match = re.fullmatch(r"(\d+)([mhd])", raw)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]
        return datetime.now(UTC) - delta
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (24h, 7d) or ISO date: {raw!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_by(raw: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in raw.split(",") if g.strip())
    unknown = [g for g in groups if g not in SUMMARY_GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"groups are among {', '.join(SUMMARY_GROUPS)} (got {raw!r})")
    return groups


def add_parser(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    usage = sub.add_parser("usage", parents=[common], help="requests, tokens and cost per key and model")
    usage.add_argument("--key", help="a key id or name")
    usage.add_argument("--since", type=_parse_since, help="24h, 7d, or an ISO date")
    usage.add_argument("--by", type=_parse_by, default=("key", "model"),
                       help="comma-separated groups among key, model, upstream, day (default: key,model)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")


async def run(args: argparse.Namespace, store: SQLStore) -> int:
    rows = await store.usage_summary(key=args.key, since=args.since, by=args.by)
    records = []
    for r in rows:
        # The cost each row was given when it was served (its target's price then), summed exactly.
        cost = None if r.cost_nanousd is None else Decimal(r.cost_nanousd) / NANO
        record: dict[str, object] = {}
        if "key" in args.by:
            record["key"] = r.key_name or r.key_id or "(no key)"
            record["key_id"] = r.key_id
        for group in ("model", "upstream", "day"):
            if group in args.by:
                record[group] = getattr(r, group)
        record.update(requests=r.requests, errors=r.errors, input_tokens=r.input_tokens,
                      output_tokens=r.output_tokens, cache_write_5m_tokens=r.cache_creation_5m,
                      cache_write_1h_tokens=r.cache_creation_1h, cache_read_tokens=r.cache_read_input_tokens,
                      cost_usd=None if cost is None else f"{cost:.9f}")
        records.append(record)
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return 0
    if args.format == "csv":
        fields = list(records[0]) if records else ["requests"]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
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
