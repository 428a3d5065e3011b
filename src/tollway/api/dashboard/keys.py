"""Accounts and keys: the list with each one's limits, balance and spend, a search, and the changes an operator
makes here (create a key, revoke one, top up a key or an account).

Every change is made by the admin API's own code (`tollway.api.admin.keys`, `.budgets`), which checks the
input, writes it, loads it into this gateway and tells the other replicas; the dashboard only reads the form
and shows the result. A new key's secret is shown on the page that answers the form, once: the store keeps its
hash, and no page can show it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from tollway.api.admin import accounts as admin_accounts
from tollway.api.admin import budgets
from tollway.api.admin import keys as admin_keys
from tollway.api.admin.inputs import query
from tollway.api.admin.views import Balances, View, account_view, key_counts, key_view, services
from tollway.api.context import Services
from tollway.api.dashboard.forms import Form, fields
from tollway.api.dashboard.login import SESSION
from tollway.api.dashboard.render import BASE, page, redirect
from tollway.store.records import PERIODS

routes = web.RouteTableDef()
SPEND_WINDOW = timedelta(days=30)
DONE = {"revoked": "Key {id} was revoked: it stops working within seconds on every replica.",
        "topup-key": "The balance of key {id} was changed.",
        "topup-account": "The balance of account {id} was changed."}


@routes.get("/keys")
async def keys_page(request: web.Request) -> web.Response:
    s = services(request)
    q = query(request, ("q", "done", "id"))
    search = q.get("q", "").lower()
    keys = await s.store.list_keys()
    accounts = await s.store.list_accounts()
    names = {a.id: a.name for a in accounts}
    balances = await Balances.load(s, [k.id for k in keys] + [a.id for a in accounts])
    await s.ledger.flush()
    spend = {r.key_id: r for r in await s.store.usage_summary(by=("key",), since=datetime.now(UTC) - SPEND_WINDOW)}

    def matches(*texts: str | None) -> bool:
        return not search or any(search in t.lower() for t in texts if t)

    shown_keys = [key_view(k, balances, names.get(k.account_id or "")) for k in reversed(keys)
                  if matches(k.name, k.id, k.hint, names.get(k.account_id or ""), k.account_id)]
    counts = key_counts(keys)
    shown_accounts = [account_view(a, balances, counts) for a in accounts if matches(a.name, a.id)]
    done = DONE.get(q.get("done", ""), "").format(id=q.get("id", "")) or None
    return page(request, "keys.html", session=request[SESSION], nav="keys", keys=shown_keys,
                accounts=shown_accounts, all_accounts=accounts, spend=spend, search=q.get("q", ""), done=done,
                periods=PERIODS, spend_days=SPEND_WINDOW.days)


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    s = services(request)
    form: Form = await request.post()
    view, secret = await admin_keys.create(s, fields(form, admin_keys.CREATE_FIELDS))
    return page(request, "created.html", session=request[SESSION], nav="keys", key=view, secret=secret)


@routes.post("/keys/{id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    view = await admin_keys.revoke(services(request), request.match_info["id"])
    return redirect(f"{BASE}/keys?done=revoked&id={view['id']}")


@routes.post("/keys/{id}/topup")
async def topup_key(request: web.Request) -> web.Response:
    return await _topup(request, "key", admin_keys.find_key, admin_keys.reloaded)


@routes.post("/accounts/{id}/topup")
async def topup_account(request: web.Request) -> web.Response:
    return await _topup(request, "account", admin_accounts.find_account, admin_accounts.reloaded)


async def _topup(request: web.Request, what: str, find: Callable[[Services, str], Awaitable[budgets.Owner]],
                 reloaded: Callable[[Services, str], Awaitable[View]]) -> web.Response:
    s = services(request)
    owner = await find(s, request.match_info["id"])
    await budgets.topup(s, owner, fields(await request.post(), budgets.TOPUP_FIELDS))
    await reloaded(s, owner.id)
    return redirect(f"{BASE}/keys?done=topup-{what}&id={owner.id}")
