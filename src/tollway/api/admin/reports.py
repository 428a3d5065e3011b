"""``/admin/usage`` and ``/admin/ledger``: what was spent, read from the store.

Both write the rows and entries the gateway still holds in memory first, so a report includes every request
answered before it was asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from tollway.api.admin.accounts import find_account
from tollway.api.admin.inputs import parsed, query
from tollway.api.admin.keys import find_key
from tollway.api.admin.views import entry_view, json_response, services
from tollway.money import usd_exact
from tollway.store import UsageSummary
from tollway.usage_report import DEFAULT_GROUPS, parse_groups, parse_since, usage_csv, usage_records

routes = web.RouteTableDef()
LEDGER_LIMIT = 100
MAX_LEDGER_LIMIT = 1000


@routes.get("/usage")
async def usage(request: web.Request) -> web.Response:
    s = services(request)
    q = query(request, ("key", "since", "by", "format"))
    since = parsed("since", q["since"], parse_since) if "since" in q else None
    by = parsed("by", q["by"], parse_groups) if "by" in q else DEFAULT_GROUPS
    form = parsed("format", q.get("format", "json"), _format)
    await s.ledger.flush()
    rows = await s.store.usage_summary(key=q.get("key"), since=since, by=by)
    records = usage_records(rows, by)
    if form == "csv":
        return web.Response(text=usage_csv(records), content_type="text/csv")
    return json_response({"data": records, "totals": usage_totals(rows)})


def usage_totals(rows: Sequence[UsageSummary]) -> dict[str, object]:
    """The sums over every group, counted from the store's integers (never from the rounded strings)."""
    costs = [r.cost_nanousd for r in rows if r.cost_nanousd is not None]
    return {"requests": sum(r.requests for r in rows), "errors": sum(r.errors for r in rows),
            "input_tokens": sum(r.input_tokens for r in rows), "output_tokens": sum(r.output_tokens for r in rows),
            "cache_write_5m_tokens": sum(r.cache_creation_5m for r in rows),
            "cache_write_1h_tokens": sum(r.cache_creation_1h for r in rows),
            "cache_read_tokens": sum(r.cache_read_input_tokens for r in rows),
            "cost_usd": usd_exact(sum(costs)) if costs else None}


def _format(raw: str) -> str:
    if raw not in ("json", "csv"):
        raise ValueError(f"must be json or csv (got {raw!r})")
    return raw


def _ledger_limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_LEDGER_LIMIT):
        raise ValueError(f"must be a whole number from 1 to {MAX_LEDGER_LIMIT} (got {raw!r})")
    return int(raw)


@routes.get("/ledger")
async def ledger(request: web.Request) -> web.Response:
    """The newest entries first, of one owner (a key's id, an account's id or name) or of all."""
    s = services(request)
    q = query(request, ("owner", "limit"))
    limit = parsed("limit", q["limit"], _ledger_limit) if "limit" in q else LEDGER_LIMIT
    owner = q.get("owner")
    if owner is not None:
        record = await (find_key(s, owner) if owner.startswith("key_") else find_account(s, owner))
        owner = record.id
    await s.ledger.flush()
    # One more than asked for tells whether there are more.
    entries = await s.store.ledger_entries(owner=owner, newest=limit + 1)
    return json_response({"data": [entry_view(i, e) for i, e in entries[:limit]], "has_more": len(entries) > limit})
