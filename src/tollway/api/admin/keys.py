"""``/admin/keys``: create, list, show, change, revoke and top up client keys.

Every change is loaded into the running gateway before the answer goes out (the key cache, and the funds
for money), so the next request sees it, rather than after the next background reload.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from tollway.accounting.keys import new_account, new_key, own_account_name
from tollway.api.admin import budgets
from tollway.api.admin.accounts import find_account
from tollway.api.admin.inputs import Fields
from tollway.api.admin.views import Balances, View, found, json_response, key_view, services, show_handler
from tollway.api.context import Services
from tollway.cli import budgets as cli_budgets
from tollway.config import LIMIT_FIELDS
from tollway.errors import InvalidRequest
from tollway.store import AccountRecord, KeyRecord

routes = web.RouteTableDef()
CREATE_FIELDS = ("name", "models", "account", *LIMIT_FIELDS, *budgets.NEW_FIELDS, "log_bodies")
UPDATE_FIELDS = ("models", *LIMIT_FIELDS, *budgets.CHANGE_FIELDS, "log_bodies")


async def find_key(s: Services, key_id: str) -> KeyRecord:
    # No key has a NUL in its id, and PostgreSQL would refuse to look one up.
    return found(None if "\x00" in key_id else await s.store.key(key_id), f"no key with id {key_id!r}")


async def _view(s: Services, key: KeyRecord) -> View:
    account = None if key.account_id is None else await s.store.account(key.account_id)
    return key_view(key, await Balances.load(s, [key.id]), None if account is None else account.name)


async def reloaded(s: Services, key_id: str) -> View:
    await s.keys.refresh()
    await s.funds.refresh()
    s.announce_change()
    return await _view(s, await find_key(s, key_id))


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    s = services(request)
    keys = await s.store.list_keys()
    names = {a.id: a.name for a in await s.store.list_accounts()}
    balances = await Balances.load(s, [k.id for k in keys])
    return json_response({"data": [key_view(k, balances, names.get(k.account_id or "")) for k in keys]})


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    view, secret = await create(services(request), await Fields.read(request, CREATE_FIELDS))
    # The secret is in this answer only: the store keeps its hash.
    return json_response({**view, "secret": secret}, status=201)


async def create(s: Services, fields: Fields) -> tuple[View, str]:
    """Make a key from ``fields`` (any of `CREATE_FIELDS`), with an account of its own unless one is named, and
    load it into the gateway: its view and its secret, which exists nowhere else."""
    name = fields.string("name", required=True)
    assert name is not None
    record, secret = new_key(name, fields.patterns("models"))
    money = budgets.new_budget(fields)
    record = dataclasses.replace(record, rpm=fields.limit("rpm"), itpm=fields.limit("itpm"),
                                 otpm=fields.limit("otpm"), max_concurrency=fields.limit("max_concurrency"),
                                 budget=cli_budgets.new(money), log_bodies=bool(fields.boolean("log_bodies")))
    ref = fields.string("account")
    own: AccountRecord | None = None
    if ref is not None:
        account = await find_account(s, ref)
    else:
        own_name = own_account_name(record, await s.store.account(name) is not None)
        account = own = new_account(own_name, record.created_at)
    record = dataclasses.replace(record, account_id=account.id)
    try:
        await s.store.insert_key(record, own)
    except IntegrityError:
        if own is None:
            raise
        # Another request took the account name between the check and the insert.
        raise InvalidRequest(f"name: an account named {own.name!r} was made meanwhile; try again") from None
    await cli_budgets.fund(s.store, record, money)
    return await reloaded(s, record.id), secret


routes.get("/keys/{id}")(show_handler("id", find_key, _view))


@routes.patch("/keys/{id}")
async def update_key(request: web.Request) -> web.Response:
    s = services(request)
    fields = await Fields.read(request, UPDATE_FIELDS)
    key = await find_key(s, request.match_info["id"])
    changes: dict[str, object] = {n: fields.limit(n) for n in LIMIT_FIELDS if fields.sent(n)}
    if fields.sent("models"):
        changes["models"] = fields.patterns("models")  # here null means something: every model
    if fields.sent("log_bodies"):
        changes["log_bodies"] = bool(fields.boolean("log_bodies"))
    money = budgets.budget_change(fields, key)
    if not changes and not budgets.changes_budget(money):
        raise InvalidRequest(f"nothing to change: give any of {', '.join(UPDATE_FIELDS)}")
    if changes:
        await s.store.update_key(key.id, changes)
    await budgets.change_budget(s, key, money)
    return json_response(await reloaded(s, key.id))


@routes.post("/keys/{id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    s = services(request)
    await Fields.read(request, ())
    return json_response(await revoke(s, request.match_info["id"]))


async def revoke(s: Services, key_id: str) -> View:
    key = await find_key(s, key_id)
    if not await s.store.revoke_key(key.id):
        raise InvalidRequest(f"the key {key.id} is revoked already")
    return await reloaded(s, key.id)


routes.post("/keys/{id}/topup")(budgets.topup_handler("id", find_key, reloaded))
