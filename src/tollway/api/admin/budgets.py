"""Money limits and top-ups, the same for keys and accounts.

The rules are the CLI's and `tollway.cli.budgets` applies them, so an amount, a cap or a period means the
same whichever way it arrives; here the fields are read and checked, with the API's wording.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from aiohttp import web

from tollway.api.admin.inputs import NOTE_LENGTH, Fields
from tollway.api.admin.views import Balances, RouteHandler, View, json_response, services
from tollway.api.context import Services
from tollway.cli import budgets as cli_budgets
from tollway.errors import InvalidRequest, NotFound
from tollway.money import MAX_NANOUSD, usd_exact
from tollway.store import AccountRecord, KeyRecord
from tollway.store.records import PERIODS

NEW_FIELDS = ("budget_usd", "cap_usd", "period")
CHANGE_FIELDS = ("cap_usd", "period", "prepaid")
TOPUP_FIELDS = ("usd", "note")
NEEDS_A_CAP = "period: needs a cap: give cap_usd above 0"
Owner = KeyRecord | AccountRecord


def new_budget(fields: Fields) -> argparse.Namespace:
    """A create request's money fields, as `tollway.cli.budgets.new` and `fund` read them."""
    args = argparse.Namespace(budget_usd=fields.usd("budget_usd"), cap_usd=fields.usd("cap_usd"),
                              period=fields.choice("period", PERIODS))
    if args.period is not None and not args.cap_usd:
        raise InvalidRequest(NEEDS_A_CAP)
    return args


def budget_change(fields: Fields, owner: Owner) -> argparse.Namespace:
    """An update's money fields, as `tollway.cli.budgets.update` reads them; ``prepaid: false`` is the CLI's
    ``--no-balance``, and ``prepaid: true`` pays from the balance again without a top-up."""
    prepaid = fields.boolean("prepaid")
    args = argparse.Namespace(cap_usd=fields.usd("cap_usd"), period=fields.choice("period", PERIODS),
                              no_balance=prepaid is False, prepaid=prepaid)
    # A period alone changes the present cap's, so there must be one.
    if args.period is not None and (args.cap_usd == 0 or (args.cap_usd is None and owner.budget.cap_nanousd is None)):
        raise InvalidRequest(NEEDS_A_CAP)
    return args


def changes_budget(args: argparse.Namespace) -> bool:
    return cli_budgets.given(args) or args.prepaid is not None


async def change_budget(s: Services, owner: Owner, args: argparse.Namespace) -> None:
    await cli_budgets.update(s.store, owner, args)
    if args.prepaid:
        await s.store.set_budget(owner.id, {"prepaid": True})


async def topup(s: Services, owner: Owner, fields: Fields) -> None:
    """Add money to the owner's balance (negative: take it back), which makes it prepaid, and have the
    gateway use it from the next request on."""
    amount = fields.usd("usd", negative=True, required=True)
    note = fields.string("note", length=NOTE_LENGTH, one_line=False)
    assert amount is not None
    if amount == 0:
        raise InvalidRequest("usd: must not be 0")
    label = f"{owner.name} ({owner.id})"
    written: list[int | None] = []

    async def write() -> None:
        written.append(await s.store.topup(owner.id, amount, note))

    if amount < 0:
        # Checked and taken from the live balance in one step (it already counts what running requests
        # hold), so no request reserving meanwhile can take it below zero.
        if not await s.funds.take_back(owner.id, -amount, write):
            balance = (await Balances.load(s, [owner.id])).view(owner.id)["balance_nanousd"]
            raise InvalidRequest(f"usd: cannot take back {usd_exact(-amount)} USD from {label}: its balance is "
                                 f"{usd_exact(balance)} USD")
    else:
        # The ledger is summed in 64-bit integers (SQLite's sum fails past them, as a 500): a balance may not grow
        # beyond them. Counted with what running requests hold, to be safe either way.
        shown = (await Balances.load(s, [owner.id])).view(owner.id)
        balance = shown["balance_nanousd"] + (shown["held_nanousd"] or 0)
        if balance + amount > MAX_NANOUSD:
            raise InvalidRequest(f"usd: would take the balance of {label} past {usd_exact(MAX_NANOUSD)} USD, the "
                                 f"most one can hold (it is {usd_exact(balance)} USD)")
        await write()
    if written[0] is None:
        raise NotFound(f"{label} is gone")
    await s.funds.refresh()


def topup_handler(param: str, find: Callable[[Services, str], Awaitable[Owner]],
                  reloaded: Callable[[Services, str], Awaitable[View]]) -> RouteHandler:
    """``POST .../topup`` for the owner that ``find`` finds by the path's ``param``; answers with the owner as
    ``reloaded`` shows it."""

    async def handle(request: web.Request) -> web.Response:
        s = services(request)
        fields = await Fields.read(request, TOPUP_FIELDS)
        owner = await find(s, request.match_info[param])
        await topup(s, owner, fields)
        return json_response(await reloaded(s, owner.id))

    return handle
