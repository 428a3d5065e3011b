"""The ``tollway`` command: a thin dispatcher over the config, the store and the server."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import logging
import re
import sys
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tollway import __version__
from tollway.accounting.keys import new_key
from tollway.config import Config, load_config
from tollway.errors import ConfigError
from tollway.store import SQLStore, open_store
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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: $TOLLWAY_CONFIG, then ./tollway.toml)")
    parser = argparse.ArgumentParser(prog="tollway", description="A fast, metered Anthropic Messages API gateway.")
    parser.add_argument("--version", action="version", version=f"tollway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")

    keys = sub.add_parser("keys", help="manage client keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", parents=[common], help="create a key; its secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--models", nargs="+", metavar="PATTERN",
                        help="glob patterns of allowed models, e.g. 'claude-sonnet-*' (default: all)")
    _limit_flags(create, "no limit")
    keys.add_parser("list", parents=[common], help="one key a line: id, name, hint, state")
    update = keys.add_parser("update", parents=[common], help="change a key's rate limits (0 removes one)")
    update.add_argument("id")
    _limit_flags(update, "unchanged")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key (takes effect within seconds)")
    revoke.add_argument("id")

    upstreams = sub.add_parser("upstreams", parents=[common], help="health and rests of a running gateway's upstreams")
    upstreams.add_argument("--url", help="the gateway's base URL (default: from the config's server section)")

    usage = sub.add_parser("usage", parents=[common], help="requests, tokens and cost per key and model")
    usage.add_argument("--key", help="a key id or name")
    usage.add_argument("--since", type=_parse_since, help="24h, 7d, or an ISO date")
    usage.add_argument("--by", type=_parse_by, default=("key", "model"),
                       help="comma-separated groups among key, model, upstream, day (default: key,model)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    return parser


NANO = Decimal(1_000_000_000)
LIMIT_FLAGS = (("rpm", "requests per minute"), ("itpm", "input tokens per minute"),
               ("otpm", "output tokens per minute"), ("max_concurrency", "requests in flight at once"))


def _limit_flags(parser: argparse.ArgumentParser, default: str) -> None:
    for name, what in LIMIT_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, metavar="N",
                            help=f"{what} (default: {default})")


def _limits(args: argparse.Namespace) -> dict[str, int | None]:
    """The limit flags given, with 0 meaning no limit."""
    out: dict[str, int | None] = {}
    for name, _ in LIMIT_FLAGS:
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                raise SystemExit(f"tollway: --{name.replace('_', '-')} must be 0 (no limit) or more")
            out[name] = value or None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            from tollway.server import serve

            return serve(config, host=args.host, port=args.port)
        if args.command == "upstreams":
            return _upstreams(args.url or _local_url(config))
        return asyncio.run(_run_store_command(args, config))
    except ConfigError as exc:
        print(f"tollway: config error: {exc}", file=sys.stderr)
        return 2


def _local_url(config: Config) -> str:
    host = config.server.host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{config.server.port}"


def _upstreams(url: str) -> int:
    """One line per upstream and per key, from the running gateway's /healthz (the state lives there)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5) as response:
            health = json.load(response)
    except (OSError, ValueError) as exc:
        print(f"tollway: cannot read {url}/healthz: {exc}", file=sys.stderr)
        return 1
    print("upstream            key  state    resting_s  failures  ok      errors  in_flight  last_error")
    for up in health.get("upstreams", []):
        print(f"{up['upstream']:<19} {'*':<4} {up['state']:<8} {up['resting_s']:>9}  {up['failures']:>8}  "
              f"{up['successes']:<7} {up['errors']:<7} {up['in_flight']:>9}  {up['last_error'] or ''}")
        for key in up["keys"]:
            state = "limited" if key["rate_limited"] else ("resting" if key["resting_s"] else "ok")
            print(f"{'':<19} {key['key']:<4} {state:<8} {key['resting_s']:>9}  {key['failures']:>8}  "
                  f"{key['successes']:<7} {key['errors']:<7} {'':>9}  {key['last_error'] or ''}")
    return 0


async def _run_store_command(args: argparse.Namespace, config: Config) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    store = open_store(config.storage.url)
    try:
        await store.migrate()
        if args.command == "migrate":
            print(f"schema is up to date ({config.storage.url})")
            return 0
        if args.command == "keys":
            return await _keys(args, store)
        return await _usage(args, store)
    finally:
        await store.close()


async def _keys(args: argparse.Namespace, store: SQLStore) -> int:
    if args.keys_command == "create":
        record, secret = new_key(args.name, tuple(args.models) if args.models else None)
        lim = _limits(args)
        record = dataclasses.replace(record, rpm=lim.get("rpm"), itpm=lim.get("itpm"), otpm=lim.get("otpm"),
                                     max_concurrency=lim.get("max_concurrency"))
        await store.insert_key(record)
        models = ", ".join(record.models) if record.models else "all models"
        print(f"created key {record.id} ({record.name}) for {models}")
        print("the secret below is shown once; store it now:")
        print(secret)
        return 0
    if args.keys_command == "list":
        for key in await store.list_keys():
            state = "active" if key.active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
            models = ",".join(key.models) if key.models else "*"
            shown = ",".join(f"{name}={getattr(key, name)}" for name, _ in LIMIT_FLAGS
                             if getattr(key, name) is not None) or "no-limits"
            print(f"{key.id}\t{key.name}\t{key.hint}\t{models}\t{shown}\t{state}\t"
                  f"created {key.created_at:%Y-%m-%d %H:%M}")
        return 0
    if args.keys_command == "update":
        limits = _limits(args)
        if not limits:
            print("tollway: nothing to change (give --rpm, --itpm, --otpm or --max-concurrency)", file=sys.stderr)
            return 2
        if not await store.update_key_limits(args.id, limits):
            print(f"tollway: no key with id {args.id}", file=sys.stderr)
            return 1
        print(f"updated {args.id}: " + ", ".join(f"{k}={v if v is not None else 'none'}" for k, v in limits.items()))
        return 0
    if await store.revoke_key(args.id):
        print(f"revoked {args.id}")
        return 0
    print(f"tollway: no active key with id {args.id}", file=sys.stderr)
    return 1


async def _usage(args: argparse.Namespace, store: SQLStore) -> int:
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
