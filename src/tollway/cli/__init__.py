"""The ``tollway`` command: a thin dispatcher over the config, the store and the server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from tollway import __version__
from tollway.cli import accounts, keys, upstreams, usage
from tollway.cli.common import Refused, config_parent
from tollway.config import Config, load_config, workers_need_redis
from tollway.errors import ConfigError
from tollway.store import SQLStore, open_store
from tollway.store.sql import StoreUnavailable, display_url

STORE_COMMANDS: dict[str, Callable[[argparse.Namespace, SQLStore], Awaitable[int]]] = {
    "keys": keys.run, "accounts": accounts.run, "usage": usage.run,
}


def build_parser() -> argparse.ArgumentParser:
    common = config_parent()
    parser = argparse.ArgumentParser(prog="tollway", description="A fast, metered Anthropic Messages API gateway.")
    parser.add_argument("--version", action="version", version=f"tollway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, metavar="N",
                       help="processes sharing the port (default: [server] workers, 1); more than one needs "
                            "[limits] url (Redis)")

    sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    keys.add_parser(sub, common)
    accounts.add_parser(sub, common)
    upstreams.add_parser(sub, common)
    usage.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        gc.enable()  # off for the start (tollway.__main__); the server turns it on once it has frozen what it built
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            from tollway.server import serve

            if args.workers is not None and args.workers > 1 and config.limits.url is None:
                raise ConfigError(workers_need_redis(config.source, args.workers))
            return serve(config, host=args.host, port=args.port, workers=args.workers)
        if args.command == "upstreams":
            return upstreams.run(args, config)
        return asyncio.run(_run_store_command(args, config))
    except ConfigError as exc:
        print(f"tollway: config error: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return exc.code
    except StoreUnavailable as exc:
        print(f"tollway: the database cannot be reached ({exc.cause})", file=sys.stderr)
        return 1


# Commands that change keys, budgets or balances, which the running replicas should reload at once.
CHANGING = {"keys": {"create", "update", "topup", "revoke"}, "accounts": {"create", "update", "topup"}}


async def _run_store_command(args: argparse.Namespace, config: Config) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    store = open_store(config.storage)
    try:
        if args.command == "migrate":
            await store.migrate()
            print(f"schema is up to date ({display_url(config.storage.url)})")
            return 0
        # Other commands bring SQLite up to date as `serve` does, and leave a shared PostgreSQL to `migrate`.
        await store.ensure_current(auto_migrate=store.dialect == "sqlite")
        code = await STORE_COMMANDS[args.command](args, store)
    finally:
        await store.close()
    if code == 0 and config.limits.url is not None and args.command in CHANGING and \
            getattr(args, f"{args.command}_command", None) in CHANGING[args.command]:
        from tollway.pubsub import CHANGES, announce

        # Running replicas reload at once instead of within key_refresh_interval; if Redis is away they
        # still do at their next reload.
        announce(config.limits.url, config.limits.prefix, CHANGES)
    return code
