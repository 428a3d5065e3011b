"""Which upstreams and keys may take requests now: rests after failures, and requests in flight.

A key that answers 429 (or refuses the gateway's credentials) is rested on its own at once: the
upstream's other keys still serve. A failure of the upstream itself (no connection, a timeout, a 5xx or
529) rests every key of it, at once when the upstream said for how long (``retry-after``), else only
once it has failed ``STREAK`` times in a row: a single error from an upstream that mostly works should
cost that one request a failover, not take the upstream out of rotation (measured in bench/soak.py: with
a rest after every error, an upstream failing 20% of the time served 2% of the traffic instead of a
third). A rest without ``retry-after`` is a backoff that starts at one second and doubles with each
further failure, up to a minute. The first success ends the streak.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["key", "upstream"]
BASE_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STREAK = 3


@dataclass(slots=True)
class Rest:
    failures: int = 0
    """Failures in a row."""
    until: float = 0.0
    """`time.monotonic()` at which the rest ends."""
    rate_limited: bool = False
    """The rest came from a 429: the upstream said it would refuse until then."""
    last_error: str | None = None
    failed_at: float = 0.0
    """When the last failure was recorded: a success of a request that started before it says nothing."""
    successes: int = 0
    errors: int = 0
    rests: int = 0
    """Rests this process decided (not those heard from other replicas), since it started."""


class HealthBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._upstreams: dict[str, Rest] = {}
        self._keys: dict[tuple[str, int], Rest] = {}
        self.in_flight: dict[str, int] = {}
        self.on_rest: Callable[[str, int | None, float, bool, str], None] | None = None
        """Told of every rest this board decides (upstream, key or None, seconds, rate limited, error): how
        other replicas learn of it."""

    def reset(self) -> None:
        """Forget every rest and streak (in-flight counts stay: those requests are still running)."""
        self._upstreams.clear()
        self._keys.clear()

    def _rest(self, upstream: str, key: int | None) -> Rest:
        if key is None:
            return self._upstreams.setdefault(upstream, Rest())
        return self._keys.setdefault((upstream, key), Rest())

    def resting_for(self, upstream: str, key: int) -> float:
        """Seconds until this key of this upstream may be tried again; 0 when it may now."""
        # Asked for every candidate of every request: no list, and no clock when nothing ever rested.
        whole, own = self._upstreams.get(upstream), self._keys.get((upstream, key))
        if whole is None and own is None:
            return 0.0
        now = self.clock()
        wait = 0.0
        for rest in (whole, own):
            if rest is not None and rest.until - now > wait:
                wait = rest.until - now
        return wait

    def rate_limited(self, upstream: str, key: int) -> bool:
        rest = self._keys.get((upstream, key))
        return bool(rest and rest.rate_limited and rest.until > self.clock())

    def acquire(self, upstream: str) -> None:
        self.in_flight[upstream] = self.in_flight.get(upstream, 0) + 1

    def release(self, upstream: str) -> None:
        self.in_flight[upstream] -= 1

    def at_capacity(self, upstream: str, cap: int | None) -> bool:
        return cap is not None and self.in_flight.get(upstream, 0) >= cap

    def succeeded(self, upstream: str, key: int, started: float) -> None:
        """A request that began at ``started`` succeeded; it ends a streak only if it began after it."""
        for rest in (self._rest(upstream, None), self._rest(upstream, key)):
            rest.successes += 1
            if started >= rest.failed_at:
                rest.failures, rest.until, rest.rate_limited = 0, 0.0, False

    def failed(self, upstream: str, key: int, *, scope: Scope, error: str, retry_after: float | None = None,
               rate_limited: bool = False) -> float:
        """Record a failure and rest the key or the whole upstream; returns the rest in seconds."""
        rest = self._rest(upstream, key if scope == "key" else None)
        rest.failures += 1
        rest.errors += 1
        rest.last_error = error
        rest.rate_limited = rate_limited
        rest.failed_at = self.clock()
        if retry_after is not None:
            delay = retry_after
        elif scope == "upstream" and rest.failures < STREAK:
            return 0.0
        else:
            extra = rest.failures - (STREAK if scope == "upstream" else 1)
            delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** extra)
        rest.until = max(rest.until, self.clock() + delay)
        rest.rests += 1
        if self.on_rest is not None:
            self.on_rest(upstream, key if scope == "key" else None, delay, rate_limited, error)
        return delay

    def rest_from_peer(self, upstream: str, key: int | None, seconds: float, rate_limited: bool, error: str) -> None:
        """Another replica rested this key (or the whole upstream) for ``seconds``: rest it here too."""
        rest = self._rest(upstream, key)
        now = self.clock()
        rest.until = max(rest.until, now + seconds)
        rest.rate_limited = rest.rate_limited or rate_limited
        rest.last_error = f"{error} (seen by another replica)"
        rest.failed_at = now

    def snapshot(self, keys_per_upstream: dict[str, int]) -> list[dict[str, Any]]:
        """The state of every upstream and key, for ``/healthz`` and ``tollway upstreams``."""
        now = self.clock()
        out = []
        for name, count in keys_per_upstream.items():
            up = self._upstreams.get(name, Rest())
            keys = []
            for i in range(count):
                k = self._keys.get((name, i), Rest())
                keys.append({"key": i, "resting_s": round(max(0.0, k.until - now), 3), "failures": k.failures,
                             "rate_limited": k.rate_limited and k.until > now, "last_error": k.last_error,
                             "successes": k.successes, "errors": k.errors, "rests": k.rests})
            resting = max(0.0, up.until - now)
            out.append({"upstream": name, "state": "resting" if resting else "ok", "resting_s": round(resting, 3),
                        "failures": up.failures, "last_error": up.last_error, "successes": up.successes,
                        "errors": up.errors, "rests": up.rests, "in_flight": self.in_flight.get(name, 0),
                        "keys": keys})
        return out
