"""Who is calling: the key from ``x-api-key`` or ``Authorization: Bearer``, checked against memory."""

from __future__ import annotations

from aiohttp import web

from tollway.accounting.keys import KeyCache
from tollway.errors import AuthenticationFailed
from tollway.store import KeyRecord


async def authenticate(request: web.Request, keys: KeyCache) -> KeyRecord:
    secret = request.headers.get("x-api-key")
    bearer = False
    if not secret:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret, bearer = token.strip(), True
    if not secret:
        raise AuthenticationFailed("x-api-key header is required")
    key = await keys.lookup(secret)
    if key is None:
        raise AuthenticationFailed("Invalid bearer token" if bearer else "invalid x-api-key")
    return key
