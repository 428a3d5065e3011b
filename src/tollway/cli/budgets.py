"""The money limits of keys and accounts on the command line: the flags, what they change, top-ups."""

from __future__ import annotations

import argparse
from typing import Any

from tollway.cli.common import Refused, SubParsers, parse_usd, parse_usd_not_negative, usd
from tollway.store import AccountRecord, Budget, KeyRecord, SQLStore
from tollway.store.records import PERIODS


def add_flags(parser: argparse.ArgumentParser, *, update: bool) -> None:
    if update:
        parser.add_argument("--cap-usd", type=parse_usd_not_negative, metavar="USD",
                            help="most that may be spent per period; 0 removes the cap")
        parser.add_argument("--period", choices=PERIODS,
                            help="what the cap counts over (UTC); alone, changes the period of the present cap")
        parser.add_argument("--no-balance", action="store_true",
                            help="stop paying from the balance (what is left stays in the ledger)")
    else:
        parser.add_argument("--budget-usd", type=parse_usd_not_negative, metavar="USD",
                            help="pay from a balance topped up with this much (refused once it runs out)")
        parser.add_argument("--cap-usd", type=parse_usd_not_negative, metavar="USD",
                            help="most that may be spent per period (default: no cap)")
        parser.add_argument("--period", choices=PERIODS, help="what the cap counts over, in UTC (default: month)")

    def check(args: argparse.Namespace) -> None:
        # Checked before the database is opened, so a wrong command line writes nothing. An update may
        # give --period alone, for the cap the key or account has: that is checked once it is read.
        if args.period is not None and (args.cap_usd == 0 or (args.cap_usd is None and not update)):
            parser.error("--period needs a cap: give --cap-usd above 0")

    parser.set_defaults(check=check)


def add_topup(commands: SubParsers, common: argparse.ArgumentParser, what: str, owner: str) -> None:
    top = commands.add_parser("topup", parents=[common],
                              help=f"add money to {what} balance (negative: take it back); makes it prepaid")
    top.add_argument("owner", metavar=owner)
    top.add_argument("amount", type=parse_usd, metavar="USD")
    top.add_argument("--note", help="kept with the ledger entry")


def new(args: argparse.Namespace) -> Budget:
    """The budget a create command's flags ask for. Prepaid from the start, before any money arrives:
    should the first top-up never happen, requests are refused rather than spent without a limit."""
    cap = args.cap_usd or None
    return Budget(prepaid=args.budget_usd is not None, cap_nanousd=cap,
                  cap_period=(args.period or "month") if cap else None)


async def fund(store: SQLStore, owner: KeyRecord | AccountRecord, args: argparse.Namespace) -> str | None:
    """The first top-up a create command asks for; a line telling the budget, if there is one."""
    balance = 0
    if args.budget_usd:
        balance = await store.topup(owner.id, args.budget_usd, "initial budget") or 0
    return f"budget: {text(owner.budget, balance)}" if owner.budget.limited else None


def given(args: argparse.Namespace) -> bool:
    return args.cap_usd is not None or args.period is not None or args.no_balance


async def update(store: SQLStore, owner: KeyRecord | AccountRecord, args: argparse.Namespace) -> list[str]:
    """Apply an update command's budget flags; what changed, as ``name=value``."""
    changes: dict[str, Any] = {}
    shown = []
    if args.cap_usd == 0:
        changes.update(cap_nanousd=None, cap_period=None)
        shown.append("cap=none")
    elif args.cap_usd is not None:
        # A new amount keeps the period the cap had: raising a daily cap should not make it monthly.
        changes.update(cap_nanousd=args.cap_usd, cap_period=args.period or owner.budget.cap_period or "month")
        shown.append(f"cap={usd(args.cap_usd)}/{changes['cap_period']}")
    elif args.period is not None:
        if owner.budget.cap_nanousd is None:
            raise Refused("--period needs a cap: give --cap-usd above 0", code=2)
        changes["cap_period"] = args.period
        shown.append(f"period={args.period}")
    if args.no_balance:
        changes["prepaid"] = False
        shown.append("prepaid=off")
    if changes:
        await store.set_budget(owner.id, changes)
    return shown


async def topup(store: SQLStore, owner: KeyRecord | AccountRecord, args: argparse.Namespace) -> int:
    """Add (or, negative, take back) money and print the new balance."""
    amount = args.amount
    if amount == 0:
        raise Refused("the amount must not be 0", code=2)
    label = f"{owner.name} ({owner.id})"
    before = (await store.balances())[0].get(owner.id, 0)
    # Not atomic with the top-up: a guard against a slip of the finger, not against requests spending meanwhile.
    if amount < 0 and before + amount < 0:
        raise Refused(f"cannot take back {usd(-amount)} from {label}: its balance is {usd(before)}")
    balance = await store.topup(owner.id, amount, args.note)
    if balance is None:
        raise Refused(f"{label} is gone")
    print(f"{label}: {'+' if amount > 0 else ''}{usd(amount)}, balance {usd(balance)}")
    if not owner.budget.prepaid:
        print("now prepaid: requests are refused once the balance cannot cover them")
    return 0


def columns(budget: Budget, balance: int) -> str:
    """The balance and the cap, tab-separated, for listings."""
    return f"{_balance(budget, balance)}\t{_cap(budget)}"


def text(budget: Budget, balance: int) -> str:
    return f"{_balance(budget, balance)}, {_cap(budget)}" if budget.limited else "no money limit"


def _cap(budget: Budget) -> str:
    return "no cap" if budget.cap_nanousd is None else f"cap {usd(budget.cap_nanousd)}/{budget.cap_period}"


def _balance(budget: Budget, balance: int) -> str:
    return f"balance {usd(balance)}" if budget.prepaid else "no balance"
