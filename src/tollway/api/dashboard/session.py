"""Who is logged in to the dashboard: signed session cookies, their CSRF tokens, and logging out.

A session is a cookie the server signs (HMAC-SHA256), not a row anywhere, so every worker and replica knows it
without sharing state: the signing key is derived from the admin token's digest, the one secret they all hold,
and changing the token ends every session. The cookie names a random session id and its end. A logout is kept
until that end by the process that served it and, where the gateway has Redis (as every setup with more than
one process does), in Redis, where every worker and replica looks before it lets a session in: a cookie copied
before the logout opens no page anywhere after it. Should Redis be away, each process knows the logouts it
served, and says so in its log.

The CSRF token of a session is a second HMAC of its id: a form's hidden field must carry it, compared in
constant time, so a page elsewhere cannot post on the operator's behalf without reading one of these pages.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("tollway.dashboard")

LIFETIME = 8 * 3600
"""Seconds a login lasts: a working day, then the token is asked for again."""
COOKIE = "tollway_session"
LOGIN_COOKIE = "tollway_login"
"""The login form's own CSRF nonce (double-submit: cookie and hidden field must match), before any session."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    expires: int
    csrf: str


class SharedLogouts:
    """Ended sessions every process sees: a Redis key per session, expiring when the session would have."""

    def __init__(self, client: Redis, prefix: str, *, owns_client: bool = False) -> None:
        self._client = client
        self._prefix = f"{prefix}dashboard:ended:"
        self._owns_client = owns_client

    async def end(self, sid: str, expires: int) -> None:
        await self._client.set(self._prefix + sid, b"1", exat=expires)

    async def ended(self, sid: str) -> bool:
        return bool(await self._client.exists(self._prefix + sid))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class Sessions:
    def __init__(self, token_sha256: bytes, lifetime: int = LIFETIME,
                 clock: Callable[[], float] = time.time, shared: SharedLogouts | None = None) -> None:
        self._key = hmac.new(token_sha256, b"tollway dashboard sessions v1", hashlib.sha256).digest()
        self._lifetime = lifetime
        self._clock = clock
        self._ended: dict[str, int] = {}
        self.shared = shared

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _session(self, sid: str, expires: int) -> Session:
        return Session(sid, expires, self._sign(f"csrf:{sid}"))

    def start(self) -> tuple[Session, str]:
        """A new session and the cookie value that carries it."""
        sid = secrets.token_urlsafe(18)
        expires = int(self._clock()) + self._lifetime
        payload = f"{sid}.{expires}"
        return self._session(sid, expires), f"{payload}.{self._sign(payload)}"

    def check(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, if its signature is right and it has neither expired nor ended."""
        if not cookie or cookie.count(".") != 2:
            return None
        sid, expires, signature = cookie.split(".")
        if not hmac.compare_digest(self._sign(f"{sid}.{expires}").encode(), signature.encode("utf-8", "replace")):
            return None
        if not expires.isdigit() or int(expires) <= self._clock() or sid in self._ended:
            return None
        return self._session(sid, int(expires))

    async def find(self, cookie: str | None) -> Session | None:
        """`check`, and then whether another process has ended the session."""
        session = self.check(cookie)
        if session is None or self.shared is None:
            return session
        try:
            ended = await self.shared.ended(session.id)
        except (RedisError, OSError) as exc:  # Redis away: no reason to lock every operator out
            log.warning("dashboard: cannot ask Redis for logouts (%s); only this process's are known", exc)
            return session
        return None if ended else session

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return same(session.csrf, presented)

    def end(self, session: Session) -> None:
        now = self._clock()
        # Forgotten once they would have expired anyway, so the set stays as small as the live sessions.
        self._ended = {sid: end for sid, end in self._ended.items() if end > now}
        self._ended[session.id] = session.expires

    async def log_out(self, session: Session) -> None:
        """`end`, here and, with Redis, for every process."""
        self.end(session)
        if self.shared is None:
            return
        try:
            await self.shared.end(session.id, session.expires)
        except (RedisError, OSError) as exc:
            log.error("dashboard: the logout of a session could not reach Redis (%s); other processes still "
                      "accept its cookie until it expires", exc)

    @property
    def lifetime(self) -> int:
        return self._lifetime


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def same(a: str | None, b: str | None) -> bool:
    """Two secrets equal, compared in constant time; a missing one equals nothing."""
    return a is not None and b is not None and hmac.compare_digest(a.encode("utf-8", "replace"),
                                                                  b.encode("utf-8", "replace"))
