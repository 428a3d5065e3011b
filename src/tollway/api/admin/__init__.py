"""The admin HTTP API under ``/admin``: keys, accounts, money, usage and the gateway's state for operators.

It opens to the config's admin token only, sent as ``Authorization: Bearer TOKEN`` or ``x-admin-token``;
client keys mean nothing here, and the token means nothing on ``/v1``. Without a token in the config the
API is not mounted at all, so ``/admin`` answers as any unknown path does. With ``[admin] port`` it is served on
that port alone: there only ``/admin`` answers, and on the client port ``/admin`` is an unknown path. What is
mounted ``beside`` it (the dashboard) follows it: on when it is, on its listener, and sharing its brake on
guessing the token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tollway.api.admin.auth import FailedAttempts, guard
from tollway.config import Config
from tollway.errors import NotFound

SubApp = Callable[[bytes, FailedAttempts], web.Application]
"""Makes an application served beside the admin API, from the admin token's digest and the failed attempts."""


def mount_admin(app: web.Application, config: Config, beside: Mapping[str, SubApp] | None = None) -> None:
    """Add the admin API to ``app``, if the config has a token, and each of ``beside`` under its prefix. With an
    admin port, ``config.admin.port`` must be the port actually listened on (`tollway.server` binds it first, so
    port 0 has become a real one)."""
    digest = config.admin.token_sha256
    if digest is None:
        return
    # Imported only when mounted: the route modules take a tenth of a default (tokenless) start's imports.
    from tollway.api.admin import accounts, keys, reports, system

    attempts = FailedAttempts()
    admin = web.Application(middlewares=[guard(digest, attempts)])
    for module in (keys, accounts, reports, system):
        admin.add_routes(module.routes)
    app.add_subapp("/admin", admin)
    apps = [admin]
    for prefix, make in (beside or {}).items():
        apps.append(make(digest, attempts))
        app.add_subapp(prefix, apps[-1])
    port = config.admin.port
    if port is not None:
        if port == 0:
            raise ValueError("bind the admin port before creating the app: port 0 is not a port yet")
        # Appended before any other: it runs right inside the error middleware, so a request on the wrong
        # listener is refused before the guard counts it as a failed token attempt.
        app.middlewares.append(_one_listener_each(apps, port))


def _one_listener_each(admin_apps: list[web.Application], admin_port: int) -> Middleware:
    """The admin port answers ``/admin`` (and what is beside it) only, and the client port anything but: by the
    port the connection came in on (never the Host header, which the client writes) and by where routing sent
    the request."""

    @web.middleware
    async def split(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        on_admin_port = isinstance(sockname, tuple) and sockname[1] == admin_port
        if on_admin_port != any(a in request.match_info.apps for a in admin_apps):
            raise NotFound("Not found")
        return await handler(request)

    return split
