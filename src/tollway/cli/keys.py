"""``tollway keys``: create, list, update, top up and revoke client keys."""

from __future__ import annotations

import argparse
import dataclasses

from tollway.accounting.keys import new_account, new_key, own_account_name
from tollway.cli import budgets
from tollway.cli.accounts import find as find_account
from tollway.cli.common import Refused, SubParsers, found, parse_name
from tollway.store import AccountRecord, SQLStore

LIMIT_FLAGS = (("rpm", "requests per minute"), ("itpm", "input tokens per minute"),
               ("otpm", "output tokens per minute"), ("max_concurrency", "requests in flight at once"))


def add_parser(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="manage client keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", parents=[common], help="create a key; its secret is printed once")
    create.add_argument("--name", required=True, type=parse_name)
    create.add_argument("--models", nargs="+", metavar="PATTERN",
                        help="glob patterns of allowed models, e.g. 'claude-sonnet-*' (default: all)")
    create.add_argument("--account", metavar="NAME_OR_ID",
                        help="the account it belongs to (default: a new account of its own, named after the key)")
    _limit_flags(create, "no limit")
    budgets.add_flags(create, update=False)
    create.add_argument("--log-bodies", action="store_true",
                        help="the request log carries this key's requests and answers (default: never)")
    keys.add_parser("list", parents=[common],
                    help="one key a line: id, name, hint, models, limits, state, created, account, balance, cap")
    update = keys.add_parser("update", parents=[common],
                             help="change a key's rate limits (0 removes one) and spending cap")
    update.add_argument("id")
    _limit_flags(update, "unchanged")
    budgets.add_flags(update, update=True)
    update.add_argument("--log-bodies", choices=("on", "off"),
                        help="whether the request log carries this key's requests and answers")
    budgets.add_topup(keys, common, "a key's own", "ID")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key (takes effect within seconds)")
    revoke.add_argument("id")


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


async def run(args: argparse.Namespace, store: SQLStore) -> int:
    if args.keys_command == "create":
        return await _create(args, store)
    if args.keys_command == "list":
        return await _list(store)
    if args.keys_command == "update":
        return await _update(args, store)
    if args.keys_command == "topup":
        return await budgets.topup(store, found(await store.key(args.owner), f"no key with id {args.owner}"), args)
    if await store.revoke_key(args.id):
        print(f"revoked {args.id}")
        return 0
    raise Refused(f"no active key with id {args.id}")


async def _create(args: argparse.Namespace, store: SQLStore) -> int:
    record, secret = new_key(args.name, tuple(args.models) if args.models else None)
    own: AccountRecord | None = None
    if args.account is not None:
        account = await find_account(store, args.account)
    else:
        # The same naming as migration 0005 gave the keys that were made before accounts.
        name = own_account_name(record, await store.account(record.name) is not None)
        account = own = new_account(name, record.created_at)
    lim = _limits(args)
    record = dataclasses.replace(record, rpm=lim.get("rpm"), itpm=lim.get("itpm"), otpm=lim.get("otpm"),
                                 max_concurrency=lim.get("max_concurrency"), account_id=account.id,
                                 budget=budgets.new(args), log_bodies=args.log_bodies)
    await store.insert_key(record, own)
    funded = await budgets.fund(store, record, args)
    models = ", ".join(record.models) if record.models else "all models"
    print(f"created key {record.id} ({record.name}) for {models}")
    print(f"account: {account.name} ({account.id}{', new' if own else ''})")
    if funded:
        print(funded)
    print("the secret below is shown once; store it now:")
    print(secret)
    return 0


async def _list(store: SQLStore) -> int:
    accounts = {a.id: a.name for a in await store.list_accounts()}
    balances = (await store.balances())[0]
    for key in await store.list_keys():
        state = "active" if key.active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
        models = ",".join(key.models) if key.models else "*"
        shown = ",".join(f"{name}={getattr(key, name)}" for name, _ in LIMIT_FLAGS
                         if getattr(key, name) is not None) or "no-limits"
        account = accounts.get(key.account_id or "", "-")
        money = budgets.columns(key.budget, balances.get(key.id, 0))
        logged = "\tlogs-bodies" if key.log_bodies else ""
        print(f"{key.id}\t{key.name}\t{key.hint}\t{models}\t{shown}\t{state}\t"
              f"created {key.created_at:%Y-%m-%d %H:%M}\t{account}\t{money}{logged}")
    return 0


async def _update(args: argparse.Namespace, store: SQLStore) -> int:
    changes: dict[str, object] = dict(_limits(args))
    if args.log_bodies is not None:
        changes["log_bodies"] = args.log_bodies == "on"
    if not changes and not budgets.given(args):
        raise Refused("nothing to change (give --rpm, --itpm, --otpm, --max-concurrency, --cap-usd, --period, "
                      "--no-balance or --log-bodies)", code=2)
    key = found(await store.key(args.id), f"no key with id {args.id}")
    if changes:
        await store.update_key(key.id, changes)
    shown = [f"{k}={v if v is not None else 'none'}" for k, v in changes.items()]
    shown += await budgets.update(store, key, args)
    print(f"updated {key.id}: " + ", ".join(shown))
    return 0
