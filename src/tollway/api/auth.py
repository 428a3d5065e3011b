"""Who is calling: the key from ``x-api-key`` or ``Authorization: Bearer``, checked against memory."""

from __future__ import annotations

from collections.abc import Mapping

from tollway.accounting.keys import KeyCache
from tollway.errors import AuthenticationFailed
from tollway.store import KeyRecord


async def authenticate(headers: Mapping[str, str], keys: KeyCache) -> KeyRecord:
    """``headers``: looked up without regard to case."""
    secret = headers.get("x-api-key")
    bearer = False
    if not secret:
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret, bearer = token.strip(), True
    if not secret:
        raise AuthenticationFailed("x-api-key header is required")
    key = await keys.lookup(secret)
    if key is None:
        raise AuthenticationFailed("Invalid bearer token" if bearer else "invalid x-api-key")
    return key
