"""The web dashboard under ``/dashboard``: server-rendered pages for operators, behind the admin token.

Pages are HTML from templates with inline SVG charts: nothing to build and no script. It is mounted beside
the admin API (`tollway.api.admin.mount_admin`), so it exists only when the admin API does, is served on the
same listener, and shares its count of failed token attempts.
"""

from __future__ import annotations

from aiohttp import web

from tollway.api.admin.auth import FailedAttempts


def dashboard_app(token_sha256: bytes, attempts: FailedAttempts) -> web.Application:
    # Imported here: a gateway without the admin API (so without the dashboard) does not load the pages at start.
    from tollway.api.dashboard import keys, login, pages
    from tollway.api.dashboard.session import Sessions

    app = web.Application(middlewares=[login.door()])
    app[login.SESSIONS] = Sessions(token_sha256)
    app[login.ATTEMPTS] = attempts
    app[login.DIGEST] = token_sha256
    for module in (login, pages, keys):
        app.add_routes(module.routes)
    return app
