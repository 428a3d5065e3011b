"""Who may use ``/admin``: the admin token, and a brake on guessing it.

The token is held as its SHA-256 only (see `tollway.config.AdminConfig`) and a presented token is hashed
before the comparison, so `hmac.compare_digest` always compares two digests of one length: neither the
answer's timing nor a length check tells a guesser anything.

Failed attempts (a wrong or missing token) are counted per client address by a generic cell rate algorithm:
a burst of `BURST` failures, then one every `INTERVAL` seconds; past that the address gets a 429 with
``retry-after``, even with the right token, since otherwise the guessing would simply go on with the right
guess answered 200. A success takes nothing from any address's allowance and gives nothing back.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tollway.config import admin_token_digest
from tollway.errors import AuthenticationFailed, RateLimited

BURST = 20
"""Failures an address may make at once: more than a person mistyping or a misconfigured script needs."""
INTERVAL = 5.0
"""Seconds per further failure once the burst is spent: twelve a minute."""
CAPACITY = 10_000
"""Addresses tracked at most; newcomers past it share one allowance, so many addresses cannot fill memory."""
OVERFLOW = "(overflow)"


def client_of(remote: str | None) -> str:
    """The address failures are counted under: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
    /64, so counting single IPv6 addresses would give it billions of allowances)."""
    if not remote:
        return "(unknown)"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailedAttempts:
    """Failed admin logins per client (GCRA): each failure moves the client's theoretical arrival time on by
    `interval`; a client whose time is more than the burst's worth ahead must wait."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL, capacity: int = CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._tolerance = (burst - 1) * interval
        self._capacity = capacity
        self._clock = clock
        self._tat: dict[str, float] = {}

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        now = self._clock()
        tat = self._tat.get(client)
        if tat is None and len(self._tat) >= self._capacity:
            tat = self._tat.get(OVERFLOW)
        return 0.0 if tat is None else max(0.0, tat - self._tolerance - now)

    def failed(self, client: str) -> None:
        now = self._clock()
        if client not in self._tat and len(self._tat) >= self._capacity:
            # An entry whose time has passed is the same as none: drop those before sharing an allowance.
            self._tat = {c: t for c, t in self._tat.items() if t > now}
            if len(self._tat) >= self._capacity:
                client = OVERFLOW
        self._tat[client] = max(self._tat.get(client, now), now) + self._interval


def refuse_if_spent(attempts: FailedAttempts, client: str) -> None:
    """A 429 with ``retry-after`` for a client that has used up its failures, whatever it presents now."""
    wait = attempts.wait(client)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise RateLimited(f"too many failed admin token attempts from this address: try again in {seconds} s",
                          headers={"retry-after": str(seconds)})


def presented_token(request: web.Request) -> str | None:
    presented = request.headers.get("x-admin-token")
    if presented is None:
        scheme, _, rest = request.headers.get("authorization", "").partition(" ")
        presented = rest.strip() if scheme.lower() == "bearer" else None
    return presented or None


def guard(token_sha256: bytes, attempts: FailedAttempts) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Runs before routing errors are raised, so an unknown path or method tells nothing without the token.
        client = client_of(request.remote)
        refuse_if_spent(attempts, client)
        presented = presented_token(request)
        if presented is None:
            attempts.failed(client)
            raise AuthenticationFailed("an admin token is required: send Authorization: Bearer TOKEN or "
                                       "x-admin-token: TOKEN")
        if not hmac.compare_digest(admin_token_digest(presented), token_sha256):
            attempts.failed(client)
            raise AuthenticationFailed("invalid admin token")
        return await handler(request)

    return check
