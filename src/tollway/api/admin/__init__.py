"""The admin HTTP API under ``/admin``: keys, accounts, money and usage for operators.

It opens to the config's admin token only, sent as ``Authorization: Bearer TOKEN`` or ``x-admin-token``;
client keys mean nothing here, and the token means nothing on ``/v1``. Without a token in the config the
API is not mounted at all, so ``/admin`` answers as any unknown path does.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tollway.api.admin import accounts, keys, reports
from tollway.config import Config
from tollway.errors import AuthenticationFailed


def mount_admin(app: web.Application, config: Config) -> None:
    token = config.admin.token
    if token is None:
        return
    admin = web.Application(middlewares=[_guard(token)])
    for module in (keys, accounts, reports):
        admin.add_routes(module.routes)
    app.add_subapp("/admin", admin)


def _guard(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Runs before routing errors are raised, so an unknown path or method tells nothing without the token.
        presented = request.headers.get("x-admin-token")
        if presented is None:
            scheme, _, rest = request.headers.get("authorization", "").partition(" ")
            presented = rest.strip() if scheme.lower() == "bearer" else None
        if not presented:
            raise AuthenticationFailed("an admin token is required: send Authorization: Bearer TOKEN or "
                                       "x-admin-token: TOKEN")
        # Compared in constant time, so the answer's timing says nothing of how much of a guess was right.
        if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected):
            raise AuthenticationFailed("invalid admin token")
        return await handler(request)

    return guard
