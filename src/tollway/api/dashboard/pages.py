"""The dashboard's read-only pages: the overview with its charts, the upstreams, and the recent requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from tollway.api.admin.inputs import query
from tollway.api.admin.views import services
from tollway.api.dashboard.charts import Series, bar_chart
from tollway.api.dashboard.login import SESSION
from tollway.api.dashboard.render import BASE, TEMPLATES, compact, number, page, redirect, usd
from tollway.errors import InvalidRequest
from tollway.store.reports import Reports, RequestFilter, Step

routes = web.RouteTableDef()
# range -> (bucket, how many, label format, a label every so many bars)
RANGES: dict[str, tuple[Step, int, str, int]] = {"24h": ("hour", 24, "%H:00", 3), "30d": ("day", 30, "%b %d", 5)}
UPSTREAM_WINDOW = timedelta(hours=1)
REQUESTS_PER_PAGE = 100
_STYLESHEET = (TEMPLATES.parent / "static" / "dashboard.css").read_bytes()


@routes.get("/static/dashboard.css")
async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=_STYLESHEET, content_type="text/css", headers={"cache-control": "max-age=3600"})


@routes.get("")
async def bare(request: web.Request) -> web.Response:
    return redirect(f"{BASE}/")


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    s = services(request)
    chosen = query(request, ("range",)).get("range", "24h")
    if chosen not in RANGES:
        raise InvalidRequest(f"range: must be one of {', '.join(RANGES)} (got {chosen!r})")
    step, count, label_format, every = RANGES[chosen]
    # What this process still holds goes to the store first, so a request just answered shows.
    await s.ledger.flush()
    reports = Reports(s.store)
    buckets = await reports.series(step, count)
    since = buckets[0].start
    labels = [b.start.strftime(label_format) for b in buckets]
    charts = {
        "Requests": bar_chart("requests", labels, [Series("answered", [b.requests - b.errors for b in buckets],
                                                          "s-main"),
                                                   Series("errors", [b.errors for b in buckets], "s-bad")],
                              number, compact, every),
        "Errors": bar_chart("errors", labels, [Series("errors", [b.errors for b in buckets], "s-bad")],
                            number, compact, every),
        "Tokens": bar_chart("tokens", labels, [Series("input", [b.input_tokens for b in buckets], "s-main"),
                                               Series("output", [b.output_tokens for b in buckets], "s-alt")],
                            number, compact, every),
        "Cost": bar_chart("cost", labels, [Series("cost", [b.cost_nanousd for b in buckets], "s-cost")],
                          lambda v: usd(int(v)), lambda v: "$" + compact(v / 1e9), every, whole=False),
    }
    totals = {"requests": sum(b.requests for b in buckets), "errors": sum(b.errors for b in buckets),
              "tokens": sum(b.input_tokens + b.output_tokens for b in buckets),
              "cost": sum(b.cost_nanousd for b in buckets)}
    return page(request, "overview.html", session=request[SESSION], nav="overview", ranges=list(RANGES),
                chosen=chosen, charts=charts, totals=totals, top_keys=await reports.top("key", since),
                top_models=await reports.top("model", since))


@routes.get("/upstreams")
async def upstreams(request: web.Request) -> web.Response:
    s = services(request)
    query(request, ())
    await s.ledger.flush()
    stats = {st.upstream: st for st in await Reports(s.store).upstreams(datetime.now(UTC) - UPSTREAM_WINDOW)}
    kinds = {u.name: u.kind for u in s.config.upstreams}
    return page(request, "upstreams.html", session=request[SESSION], nav="upstreams",
                health=s.health.snapshot(s.table.key_counts()), stats=stats, kinds=kinds, models=s.config.models,
                window_minutes=int(UPSTREAM_WINDOW.total_seconds() // 60))


def _status(raw: str) -> str:
    if raw in ("ok", "error") or (raw.isascii() and raw.isdigit() and len(raw) == 3):
        return raw
    raise InvalidRequest(f"status: must be ok, error or a status code such as 429 (got {raw!r})")


@routes.get("/requests")
async def requests(request: web.Request) -> web.Response:
    s = services(request)
    q = query(request, ("key", "model", "upstream", "status", "before"))
    before = q.get("before")
    if before is not None and not (before.isascii() and before.isdigit() and len(before) <= 18):
        raise InvalidRequest(f"before: must be a row number (got {before!r})")
    where = RequestFilter(key=q.get("key"), model=q.get("model"), upstream=q.get("upstream"),
                          status=None if "status" not in q else _status(q["status"]))
    await s.ledger.flush()
    rows = await Reports(s.store).requests(where, REQUESTS_PER_PAGE, None if before is None else int(before))
    older = None
    if len(rows) == REQUESTS_PER_PAGE:
        older = {**{k: v for k, v in q.items() if k != "before"}, "before": str(rows[-1].id)}
    return page(request, "requests.html", session=request[SESSION], nav="requests", rows=rows, where=where,
                models=sorted({m.name for m in s.config.models}), upstreams=[u.name for u in s.config.upstreams],
                older=older, filtered=any(v is not None for v in (where.key, where.model, where.upstream,
                                                                   where.status)))
