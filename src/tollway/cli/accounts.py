"""``tollway accounts``: the customers, teams or apps that keys belong to, with one bill each."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime

from tollway.accounting.keys import ACCOUNT_PREFIX, new_account
from tollway.cli import budgets
from tollway.cli.common import Refused, SubParsers, found, parse_name
from tollway.store import AccountRecord, SQLStore


def add_parser(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    accounts = sub.add_parser("accounts", help="manage accounts: one bill for all their keys").add_subparsers(
        dest="accounts_command", required=True)
    create = accounts.add_parser("create", parents=[common], help="create an account")
    create.add_argument("name", type=parse_name)
    budgets.add_flags(create, update=False)
    accounts.add_parser("list", parents=[common], help="one account a line: id, name, balance, cap, keys, created")
    update = accounts.add_parser("update", parents=[common], help="change an account's spending cap or balance")
    update.add_argument("owner", metavar="NAME_OR_ID")
    budgets.add_flags(update, update=True)
    budgets.add_topup(accounts, common, "an account's", "NAME_OR_ID")


async def run(args: argparse.Namespace, store: SQLStore) -> int:
    if args.accounts_command == "create":
        return await _create(args, store)
    if args.accounts_command == "list":
        return await _list(store)
    account = await find(store, args.owner)
    if args.accounts_command == "topup":
        return await budgets.topup(store, account, args)
    if not budgets.given(args):
        raise Refused("nothing to change (give --cap-usd, --period or --no-balance)", code=2)
    shown = await budgets.update(store, account, args)
    print(f"updated {account.name} ({account.id}): " + ", ".join(shown))
    return 0


async def find(store: SQLStore, ref: str) -> AccountRecord:
    return found(await store.account(ref),
                 f"no account named or with id {ref!r} (make one with `tollway accounts create NAME`)")


async def _create(args: argparse.Namespace, store: SQLStore) -> int:
    name = args.name.strip()
    # Accounts are found by id or by name: a name shaped like an id could shadow another account.
    if not name or name.startswith(ACCOUNT_PREFIX):
        raise Refused(f"an account name must be non-empty and not start with {ACCOUNT_PREFIX!r}", code=2)
    if await store.account(name) is not None:
        raise Refused(f"an account named {name!r} exists already")
    account = new_account(name, datetime.now(UTC), budgets.new(args))
    await store.insert_account(account)
    funded = await budgets.fund(store, account, args)
    print(f"created account {account.id} ({account.name})")
    if funded:
        print(funded)
    return 0


async def _list(store: SQLStore) -> int:
    keys = await store.list_keys()
    active = Counter(k.account_id for k in keys if k.active)
    revoked = Counter(k.account_id for k in keys if not k.active)
    balances = (await store.balances())[0]
    for a in await store.list_accounts():
        count = f"{active[a.id]} key{'' if active[a.id] == 1 else 's'}"
        if revoked[a.id]:
            count += f" (+{revoked[a.id]} revoked)"
        print(f"{a.id}\t{a.name}\t{budgets.columns(a.budget, balances.get(a.id, 0))}\t{count}\t"
              f"created {a.created_at:%Y-%m-%d %H:%M}")
    return 0
