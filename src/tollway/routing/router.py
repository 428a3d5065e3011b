"""Choosing a target and key for each request, and trying the next one when an upstream fails.

Order: by priority, then within a priority by cache affinity (requests that mark a prompt prefix for
caching go where that conversation went before, so the prompt cache keeps hitting) or, for the rest, a
weighted random draw. Keys and upstreams that are resting or at their concurrency cap are passed over.

Failover happens only before the first byte reaches the client: connection errors, timeouts, 408, 429,
5xx and 529 move the request to the next candidate, unless the upstream said ``x-should-retry: false``.
A streamed answer counts as started once its first chunk has arrived, so an upstream that accepts the
request and dies before sending anything is failed over too, when another candidate is left to try.
Errors the client caused (400, 404, 413...) are returned at once.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tollway.errors import Overloaded, RateLimited, TollwayError, UpstreamError
from tollway.protocol.sanitize import drop_signed_thinking, has_signed_thinking
from tollway.providers import Provider, UpstreamCall, UpstreamReply
from tollway.routing.affinity import affinity_key, rendezvous_order
from tollway.routing.health import HealthBoard, Scope
from tollway.routing.table import Route, RoutingTable, Target

RETRYABLE = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class Candidate:
    target: Target
    key_index: int
    weight: float

    @property
    def provider(self) -> Provider:
        return self.target.provider

    @property
    def id(self) -> str:
        return f"{self.target.provider.name}#{self.key_index}"


@dataclass(frozen=True, slots=True)
class Try:
    upstream: str
    key: int
    status: int
    error: str | None
    ms: float

    def as_json(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "key": self.key, "status": self.status, "error": self.error,
                "ms": round(self.ms, 1)}


@dataclass(slots=True)
class Request:
    """What the router needs of an admitted request to build each try's call."""

    endpoint: str
    body: bytes
    payload: dict[str, Any]
    headers: dict[str, str]
    query: str
    client_model: str
    stream: bool
    tries: list[Try] = field(default_factory=list)


def _retry_after(headers: dict[str, str]) -> float | None:
    raw = headers.get("retry-after-ms")
    try:
        if raw is not None:
            return float(raw) / 1000
        raw = headers.get("retry-after")
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def classify(status: int, headers: dict[str, str]) -> Scope | None:
    """Whether a failed answer is worth another candidate, and whose fault it was; None: final."""
    if headers.get("x-should-retry") == "false":
        return None
    if status in (401, 403, 429):
        return "key"
    if status in RETRYABLE or status >= 500:
        return "upstream"
    return None


class Router:
    def __init__(self, table: RoutingTable, health: HealthBoard, rng: random.Random | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.table = table
        self.health = health
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._group_cache: dict[str, list[list[Candidate]]] = {}

    # -- choice ---------------------------------------------------------------------------------------

    def _groups(self, route: Route) -> list[list[Candidate]]:
        """The route's candidates by priority, built once per route: they never change."""
        groups = self._group_cache.get(route.name)
        if groups is None:
            groups = [[Candidate(t, i, t.weight / len(keys))
                       for t in route.targets if t.priority == priority
                       for keys in [self.table.keys(t.provider)] for i in range(len(keys))]
                      for priority in sorted({t.priority for t in route.targets})]
            self._group_cache[route.name] = groups
        return groups

    def candidates(self, route: Route, payload: dict[str, Any]) -> list[Candidate]:
        """Every (target, key) of the route, most preferred first, ignoring health."""
        groups = self._groups(route)
        if len(groups) == 1 and len(groups[0]) == 1:
            return groups[0]  # one upstream, one key: nothing to choose
        affinity = affinity_key(payload)
        ordered: list[Candidate] = []
        for group in groups:
            if len(group) == 1:
                ordered.append(group[0])
                continue
            if affinity is not None:
                order = rendezvous_order(affinity, [(c.id, c.weight) for c in group])
            else:
                # Weighted random order (Efraimidis-Spirakis): each candidate draws u**(1/w).
                draws = [self._rng.random() ** (1 / c.weight) for c in group]
                order = sorted(range(len(group)), key=lambda i: draws[i], reverse=True)
            ordered.extend(group[i] for i in order)
        return ordered

    def _has_room(self, c: Candidate) -> bool:
        return not self.health.at_capacity(c.provider.name, c.provider.config.max_concurrency)

    def plan(self, route: Route, all_candidates: list[Candidate]) -> list[Candidate]:
        if len(all_candidates) == 1:
            # The usual route (one upstream, one key), every request: its answer without the lists below.
            only = all_candidates[0]
            if self._has_room(only) and self.health.resting_for(only.provider.name, only.key_index) == 0:
                return [only]
        roomy = [c for c in all_candidates if self._has_room(c)]
        if not roomy:
            raise Overloaded(f"every upstream for {route.name} is at its concurrency limit")
        usable = [c for c in roomy if self.health.resting_for(c.provider.name, c.key_index) == 0]
        if usable:
            return usable
        if all(self.health.rate_limited(c.provider.name, c.key_index) for c in roomy):
            wait = min(self.health.resting_for(c.provider.name, c.key_index) for c in roomy)
            raise RateLimited(f"every upstream key for {route.name} is rate limited",
                              headers={"retry-after": str(max(1, math.ceil(wait)))})
        # Everything is resting: rather than refuse, probe the one whose rest ends first.
        probe = [c for c in roomy if not self.health.rate_limited(c.provider.name, c.key_index)]
        probe.sort(key=lambda c: self.health.resting_for(c.provider.name, c.key_index))
        return probe

    # -- sending --------------------------------------------------------------------------------------

    async def send(self, route: Route, request: Request) -> tuple[UpstreamReply, Candidate]:
        everyone = self.candidates(route, request.payload)
        preferred = everyone[0]
        planned = self.plan(route, everyone)
        # By default each healthy candidate once: an upstream that fails skips its other keys (below), a
        # key that is limited leaves the upstream's other keys to try.
        attempts = route.retry.attempts or len(planned)
        last_error: TollwayError | None = None
        last_reply: tuple[UpstreamReply, Candidate] | None = None
        round_ = 0
        while len(request.tries) < attempts:
            if round_:
                await self._sleep(route.retry.backoff * 2 ** (round_ - 1))
                planned = self.plan(route, everyone)
            failed_upstreams: set[str] = set()
            for candidate in planned:
                if len(request.tries) >= attempts:
                    break
                if candidate.provider.name in failed_upstreams:
                    continue
                # With nothing left to fail over to, a stream need not wait for its first chunk here.
                last_chance = len(request.tries) + 1 >= attempts or (
                    candidate is planned[-1] and route.retry.attempts is None)
                outcome = await self._try(request, candidate, preferred, prefetch=not last_chance)
                if isinstance(outcome, UpstreamReply):
                    scope = classify(outcome.status, outcome.headers) if outcome.status >= 400 else None
                    if scope is None:
                        return outcome, candidate
                    last_reply, last_error = (outcome, candidate), None
                else:
                    scope, last_error, last_reply = outcome[0], outcome[1], None
                if scope == "upstream":
                    failed_upstreams.add(candidate.provider.name)
            round_ += 1
            if route.retry.attempts is None:
                break
        if last_reply is not None:
            return last_reply
        raise last_error or Overloaded(f"no upstream could take the request for {route.name}")

    async def _try(self, request: Request, candidate: Candidate, preferred: Candidate,
                   prefetch: bool = True) -> UpstreamReply | tuple[Scope | None, TollwayError]:
        call = self._call(request, candidate, preferred)
        upstream, key = candidate.provider.name, candidate.key_index
        started = time.monotonic()
        self.health.acquire(upstream)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.health.release(upstream)

        def note(status: int, error: str | None) -> None:
            request.tries.append(Try(upstream, key, status, error, (time.monotonic() - started) * 1000))

        try:
            reply = await candidate.provider.send(call)
            if reply.chunks is not None and prefetch:
                # A stream counts as started once its first chunk is in: until then, failures fail over.
                reply.head = await anext(reply.chunks, b"")
        except TollwayError as exc:
            release()
            note(exc.status, exc.error_type)
            scope: Scope | None = "key" if exc.key_fault else None
            if scope is None and (isinstance(exc, UpstreamError) or exc.status >= 429):
                scope = classify(exc.status, exc.headers)
            if scope is not None:
                self._rest(upstream, key, scope, exc.error_type, exc.status, exc.headers)
            return scope, exc
        except BaseException:
            # The client left (or the gateway stops) while this try was under way.
            release()
            note(499, "client_closed")
            raise
        note(reply.status, reply.upstream_error)
        scope = classify(reply.status, reply.headers) if reply.status >= 400 else None
        if scope is not None:
            release()
            self._rest(upstream, key, scope, reply.upstream_error or f"HTTP {reply.status}", reply.status,
                       reply.headers)
            return reply
        reply.finalizers.append(release)
        reply.finalizers.append(lambda: self._settle(reply, upstream, key, started))
        return reply

    def _settle(self, reply: UpstreamReply, upstream: str, key: int, started: float) -> None:
        if reply.status >= 400:
            return  # a final error answer (a 400 the client caused) says nothing of the upstream's health
        if reply.upstream_error is not None:
            self.health.failed(upstream, key, scope="upstream", error=f"stream broke: {reply.upstream_error}")
        elif reply.completed:
            self.health.succeeded(upstream, key, started)

    def _rest(self, upstream: str, key: int, scope: Scope, error: str, status: int,
              headers: dict[str, str]) -> None:
        self.health.failed(upstream, key, scope=scope, error=error, retry_after=_retry_after(headers),
                           rate_limited=status == 429)

    def _call(self, request: Request, candidate: Candidate, preferred: Candidate) -> UpstreamCall:
        target = candidate.target
        payload, body = request.payload, request.body
        changed = False
        if target.rewrite or payload.get("model") != target.model:
            payload = dict(payload, model=target.model)
            changed = True
        if candidate is not preferred and candidate.id != preferred.id and has_signed_thinking(request.body):
            # Signatures belong to the account that made them; this one is not the conversation's own.
            payload = orjson.loads(orjson.dumps(payload))
            changed = drop_signed_thinking(payload) or changed
        if changed:
            body = orjson.dumps(payload)
        return UpstreamCall(endpoint=request.endpoint, body=body, payload=payload, headers=request.headers,
                            query=request.query, model=target.model, client_model=request.client_model,
                            stream=request.stream, api_key=self.table.keys(target.provider)[candidate.key_index])
