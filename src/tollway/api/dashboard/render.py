"""Pages from templates: Jinja2 with autoescaping, so every string a user typed (a key's name, a model, a
note) is HTML-escaped wherever it lands; and the headers every dashboard page carries.

Jinja2 is imported on the first page, not at start: a gateway without the dashboard open never pays for it.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tollway.api.errors import REQUEST_ID

if TYPE_CHECKING:
    from jinja2 import Environment

BASE = "/dashboard"
TEMPLATES = Path(__file__).parent / "templates"
# No script runs on these pages and nothing is framed or loaded from elsewhere; forms post back here only.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    # Pages hold balances and, once, a secret: never kept by the browser or a proxy.
    "cache-control": "no-store",
}


def usd(nano: int | None) -> str:
    """Dollars for reading: cents, or four decimals below a cent so that small costs do not show as $0.00."""
    if nano is None:
        return "—"
    dollars = nano / 1e9
    if dollars and abs(dollars) < 0.01:
        return f"${dollars:,.4f}"
    return f"${dollars:,.2f}"


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def compact(value: float) -> str:
    """An axis label: 950, 1.2k, 3.4M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:,.0f} ms"


@functools.cache
def environment() -> Environment:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(usd=usd, number=number, compact=compact, when=when, ms=ms)
    env.globals["base"] = BASE
    return env


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    context.setdefault("session", None)
    context.setdefault("nav", None)
    context.setdefault("request_id", request.get(REQUEST_ID))
    html = environment().get_template(template).render(**context)
    return web.Response(text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def redirect(location: str) -> web.Response:
    """A 303: after a form's POST the browser GETs the page, so a reload does not post again."""
    return web.Response(status=303, headers={"location": location, **SECURITY_HEADERS})
