"""The web dashboard under ``/dashboard``: server-rendered pages for operators, behind the admin token.

Pages are HTML from templates with inline SVG charts: nothing to build and no script. It is mounted beside
the admin API (`tollway.api.admin.mount_admin`), so it exists only when the admin API does, is served on the
same listener, and shares its count of failed token attempts.
"""

from __future__ import annotations

from aiohttp import web

from tollway.api.admin.auth import FailedAttempts


def dashboard_app(token_sha256: bytes, attempts: FailedAttempts, *, redis_url: str | None = None,
                  redis_prefix: str = "tollway:", redis_timeout: float = 1.0) -> web.Application:
    """The dashboard; with ``redis_url`` (the config's ``[limits] url``), a logout holds on every process."""
    # Imported here: a gateway without the admin API (so without the dashboard) does not load the pages at start.
    from tollway.api.dashboard import keys, login, pages
    from tollway.api.dashboard.session import Sessions, SharedLogouts

    app = web.Application(middlewares=[login.door()])
    shared = None
    if redis_url is not None:
        from tollway.limits.redis import connect

        shared = SharedLogouts(connect(redis_url, timeout=redis_timeout, max_connections=16), redis_prefix,
                               owns_client=True)

        async def close(_: web.Application) -> None:
            await shared.close()

        app.on_cleanup.append(close)
    app[login.SESSIONS] = Sessions(token_sha256, shared=shared)
    app[login.ATTEMPTS] = attempts
    app[login.DIGEST] = token_sha256
    for module in (login, pages, keys):
        app.add_routes(module.routes)
    return app
