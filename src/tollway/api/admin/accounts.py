"""``/admin/accounts``: the customers, teams or apps that keys belong to, with one bill each."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from tollway.accounting.keys import ACCOUNT_PREFIX, new_account
from tollway.api.admin import budgets
from tollway.api.admin.inputs import Fields
from tollway.api.admin.views import (
    Balances,
    View,
    account_view,
    found,
    json_response,
    key_counts,
    services,
    show_handler,
)
from tollway.api.context import Services
from tollway.cli import budgets as cli_budgets
from tollway.errors import InvalidRequest
from tollway.store import AccountRecord

routes = web.RouteTableDef()
CREATE_FIELDS = ("name", *budgets.NEW_FIELDS)


async def find_account(s: Services, ref: str) -> AccountRecord:
    # No account has a NUL in its name or id (they are refused), and PostgreSQL would refuse to look one up.
    return found(None if "\x00" in ref else await s.store.account(ref), f"no account named or with id {ref!r}")


async def _view(s: Services, account: AccountRecord) -> View:
    return account_view(account, await Balances.load(s, [account.id]), key_counts(await s.store.list_keys()))


async def reloaded(s: Services, account_id: str) -> View:
    await s.funds.refresh()
    s.announce_change()
    return await _view(s, await find_account(s, account_id))


@routes.get("/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    s = services(request)
    accounts = await s.store.list_accounts()
    counts = key_counts(await s.store.list_keys())
    balances = await Balances.load(s, [a.id for a in accounts])
    return json_response({"data": [account_view(a, balances, counts) for a in accounts]})


@routes.post("/accounts")
async def create_account(request: web.Request) -> web.Response:
    s = services(request)
    fields = await Fields.read(request, CREATE_FIELDS)
    name = fields.string("name", required=True)
    assert name is not None
    money = budgets.new_budget(fields)
    # Accounts are found by id or by name: a name shaped like an id could shadow another account.
    if name.startswith(ACCOUNT_PREFIX):
        raise InvalidRequest(f"name: must not start with {ACCOUNT_PREFIX!r}")
    taken = InvalidRequest(f"name: an account named {name!r} exists already")
    if await s.store.account(name) is not None:
        raise taken
    account = new_account(name, datetime.now(UTC), cli_budgets.new(money))
    try:
        await s.store.insert_account(account)
    except IntegrityError:
        raise taken from None
    await cli_budgets.fund(s.store, account, money)
    return json_response(await reloaded(s, account.id), status=201)


routes.get("/accounts/{ref}")(show_handler("ref", find_account, _view))


@routes.patch("/accounts/{ref}")
async def update_account(request: web.Request) -> web.Response:
    s = services(request)
    fields = await Fields.read(request, budgets.CHANGE_FIELDS)
    account = await find_account(s, request.match_info["ref"])
    money = budgets.budget_change(fields, account)
    if not budgets.changes_budget(money):
        raise InvalidRequest(f"nothing to change: give any of {', '.join(budgets.CHANGE_FIELDS)}")
    await budgets.change_budget(s, account, money)
    return json_response(await reloaded(s, account.id))


routes.post("/accounts/{ref}/topup")(budgets.topup_handler("ref", find_account, reloaded))
