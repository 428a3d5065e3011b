"""What the admin API answers: keys, accounts and ledger entries as JSON.

Money goes out twice, as an exact decimal string of dollars (``"20.000000000"``) and as the integer of
nano-dollars it came from; never as a float. Times are RFC 3339 in UTC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from tollway.accounting.wallet import Purse, period_of
from tollway.api.context import SERVICES, Services
from tollway.config import LIMIT_FIELDS
from tollway.errors import NotFound
from tollway.money import usd_exact
from tollway.store import AccountRecord, Budget, KeyRecord, LedgerEntry

View = dict[str, Any]
T = TypeVar("T")
RouteHandler = Callable[[web.Request], Awaitable[web.Response]]


def services(request: web.Request) -> Services:
    # config_dict reaches the main application's services from the admin sub-application.
    return request.config_dict[SERVICES]


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def found(record: T | None, missing: str) -> T:
    if record is None:
        raise NotFound(missing)
    return record


def show_handler(param: str, find: Callable[[Services, str], Awaitable[T]],
                 view: Callable[[Services, T], Awaitable[View]]) -> RouteHandler:
    """``GET`` of the record that ``find`` finds by the path's ``param``, as ``view`` shows it."""

    async def handle(request: web.Request) -> web.Response:
        s = services(request)
        return json_response(await view(s, await find(s, request.match_info[param])))

    return handle


def timestamp(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def money(name: str, nano: int | None) -> View:
    return {f"{name}_usd": None if nano is None else usd_exact(nano), f"{name}_nanousd": nano}


def budget_view(budget: Budget) -> View:
    return {"prepaid": budget.prepaid, **money("cap", budget.cap_nanousd), "period": budget.cap_period}


class Balances:
    """Owners' money as the running gateway holds it, else, for an owner it has not loaded yet, the sum of
    the owner's ledger in the store (with nothing known of what is held or spent)."""

    def __init__(self, now: datetime, live: dict[str, Purse], stored: dict[str, int]) -> None:
        self._now = now
        self._live = live
        self._stored = stored

    @classmethod
    async def load(cls, s: Services, owners: Iterable[str]) -> Balances:
        owners = list(owners)
        live = await s.funds.snapshot(owners)
        # Summing the whole ledger is the slow path: only when some owner has no live purse.
        missing = any(owner not in live for owner in owners)
        return cls(s.funds.now(), live, (await s.store.balances())[0] if missing else {})

    def view(self, owner: str) -> View:
        purse = self._live.get(owner)
        if purse is None:
            return {"source": "store", **money("balance", self._stored.get(owner, 0)), **money("held", None),
                    **money("spent", None), "period": None}
        # Spending is counted only for owners with a money limit; a new period starts from zero before any
        # request has rolled the purse over.
        period = period_of(self._now, purse.budget.cap_period) if purse.budget.limited else None
        spent = None if period is None else purse.spent if purse.period == period else 0
        return {"source": "live", **money("balance", purse.balance), **money("held", purse.held),
                **money("spent", spent), "period": period}


def key_view(key: KeyRecord, balances: Balances, account_name: str | None) -> View:
    return {
        "type": "key", "id": key.id, "name": key.name, "hint": key.hint,
        "models": None if key.models is None else list(key.models),
        "state": "active" if key.active else "revoked",
        "created_at": timestamp(key.created_at), "revoked_at": timestamp(key.revoked_at),
        "limits": {name: getattr(key, name) for name in LIMIT_FIELDS},
        "account": None if key.account_id is None else {"id": key.account_id, "name": account_name},
        "budget": budget_view(key.budget), "balance": balances.view(key.id), "log_bodies": key.log_bodies,
    }


def key_counts(keys: Iterable[KeyRecord]) -> dict[str, View]:
    """Each account's active and revoked keys, by account id."""
    counts: dict[str, View] = {}
    for key in keys:
        if key.account_id is not None:
            count = counts.setdefault(key.account_id, {"active": 0, "revoked": 0})
            count["active" if key.active else "revoked"] += 1
    return counts


def account_view(account: AccountRecord, balances: Balances, counts: dict[str, View]) -> View:
    return {
        "type": "account", "id": account.id, "name": account.name, "created_at": timestamp(account.created_at),
        "keys": counts.get(account.id, {"active": 0, "revoked": 0}),
        "budget": budget_view(account.budget), "balance": balances.view(account.id),
    }


def entry_view(entry_id: int, entry: LedgerEntry) -> View:
    return {"id": entry_id, "created_at": timestamp(entry.created_at), "owner": entry.owner, "kind": entry.kind,
            **money("amount", entry.amount_nanousd), "request_id": entry.request_id, "note": entry.note}
