"""The admin HTTP API under ``/admin``: keys, accounts, money, usage and the gateway's state for operators.

It opens to the config's admin token only, sent as ``Authorization: Bearer TOKEN`` or ``x-admin-token``;
client keys mean nothing here, and the token means nothing on ``/v1``. Without a token in the config the
API is not mounted at all, so ``/admin`` answers as any unknown path does. With ``[admin] port`` it is served on
that port alone: there only ``/admin`` answers, and on the client port ``/admin`` is an unknown path.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tollway.api.admin import accounts, keys, reports, system
from tollway.api.admin.auth import FailedAttempts, guard
from tollway.config import Config
from tollway.errors import NotFound

ROUTE_MODULES = (keys, accounts, reports, system)


def mount_admin(app: web.Application, config: Config) -> None:
    """Add the admin API to ``app``, if the config has a token. With an admin port, ``config.admin.port`` must be
    the port actually listened on (`tollway.server` binds it first, so port 0 has become a real one)."""
    digest = config.admin.token_sha256
    if digest is None:
        return
    admin = web.Application(middlewares=[guard(digest, FailedAttempts())])
    for module in ROUTE_MODULES:
        admin.add_routes(module.routes)
    app.add_subapp("/admin", admin)
    port = config.admin.port
    if port is not None:
        if port == 0:
            raise ValueError("bind the admin port before creating the app: port 0 is not a port yet")
        # Appended before any other: it runs right inside the error middleware, so a request on the wrong
        # listener is refused before the guard counts it as a failed token attempt.
        app.middlewares.append(_one_listener_each(admin, port))


def _one_listener_each(admin: web.Application, admin_port: int) -> Middleware:
    """The admin port answers ``/admin`` only, and the client port anything but: by the port the connection
    came in on (never the Host header, which the client writes) and by where routing sent the request."""

    @web.middleware
    async def split(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        on_admin_port = isinstance(sockname, tuple) and sockname[1] == admin_port
        if on_admin_port != (admin in request.match_info.apps):
            raise NotFound("Not found")
        return await handler(request)

    return split
