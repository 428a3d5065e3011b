"""A key's rate limits, Anthropic's way: requests, input tokens and output tokens per minute, and
requests in flight.

Input tokens are not known before the upstream counts them, so a request is charged an estimate (its body
at four bytes a token, which overestimates) and refunded the difference once the real count is in. Output
tokens are charged at ``max_tokens`` and refunded down to what was produced, as Anthropic does for its
output-tokens-per-minute limit. Every answer to a limited key carries Anthropic's ``anthropic-ratelimit-*``
headers; a refusal is a 429 ``rate_limit_error`` with ``retry-after``, which the SDKs honour.

A key may also have limits on the model it asks for (`tollway.limits.rules`): those are buckets of their
own, taken in the same ``limiter.take`` as the key's, so a request passes all of them or takes from none.
Each header reports the bucket of its kind with the least left; a 429 says which limits refused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from tollway.errors import RateLimited
from tollway.limits.base import Decision, Limiter, Quota, Take
from tollway.limits.rules import LimitRules
from tollway.store import KeyRecord

BYTES_PER_TOKEN = 4
_HEADER_NAMES = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}
# Each kind's three header names, built once.
_HEADERS = {kind: tuple(f"anthropic-ratelimit-{name}-{part}" for part in ("limit", "remaining", "reset"))
            for kind, name in [*_HEADER_NAMES.items(), ("tokens", "tokens")]}


@functools.lru_cache(maxsize=65_536)
def _key_buckets(key_id: str, rpm: int | None, itpm: int | None,
                 otpm: int | None) -> tuple[tuple[int, str, str, Quota], ...]:
    """A key's own buckets, named and sized once per key and limits rather than per request: each with its
    kind's place in the costs of a request (requests, input tokens, output tokens)."""
    return tuple((i, kind, f"{key_id}:{kind}", Quota(limit))
                 for i, (kind, limit) in enumerate((("rpm", rpm), ("itpm", itpm), ("otpm", otpm)))
                 if limit is not None)


@functools.lru_cache(maxsize=65_536)
def _slot_name(key_id: str) -> str:
    return f"{key_id}:concurrency"


def _rfc3339(epoch: float) -> str:
    return _rfc3339_second(math.ceil(epoch))


@functools.lru_cache(maxsize=4096)
def _rfc3339_second(second: int) -> str:
    # Formatting a time is most of what the headers cost; many answers share the same reset second.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Charge(NamedTuple):
    kind: str
    """``rpm``, ``itpm`` or ``otpm``."""
    model: str | None
    """The model of a model-scoped bucket; None for the key's own, across all models."""
    take: Take


class Admission:
    """What one request took, to give back what it did not use and to label its answer.

    A plain class: one is made per limited request, and a dataclass with default factories costs several
    times more to build."""

    __slots__ = ("headers", "slots", "takes", "untils")

    def __init__(self) -> None:
        self.takes: list[Charge] = []
        """What was taken."""
        self.untils: list[float] = []
        """The ``reset_at`` each take was given, so a refund cannot free capacity the bucket has regained."""
        self.headers: dict[str, str] = {}
        self.slots: list[str] = []
        """The concurrency counters held: the key's, the key's on this model, or both."""


def headers_for(decisions: dict[str, Decision]) -> dict[str, str]:
    out: dict[str, str] = {}
    itpm: Decision | None = None
    otpm: Decision | None = None
    for kind, d in decisions.items():
        limit, remaining, reset = _HEADERS[kind]
        out[limit] = str(d.limit)
        out[remaining] = str(d.remaining)
        out[reset] = _rfc3339(d.reset_at)
        if kind == "itpm":
            itpm = d
        elif kind == "otpm":
            otpm = d
    # "tokens" is whichever token limit is closer to running out, as Anthropic reports it.
    tight = itpm if otpm is None or (itpm is not None and itpm.remaining <= otpm.remaining) else otpm
    if tight is not None:
        limit, remaining, reset = _HEADERS["tokens"]
        out[limit] = str(tight.limit)
        out[remaining] = str(tight.remaining)
        out[reset] = _rfc3339(tight.reset_at)
    return out


def tightest(charges: Sequence[Charge], decisions: Sequence[Decision]) -> dict[str, Decision]:
    """Of each kind, the bucket with the least left: the one a client has to pace itself by. On a tie, a
    refusing bucket, since its count is the one that explains the 429."""
    out: dict[str, Decision] = {}
    for charge, d in zip(charges, decisions, strict=True):
        best = out.get(charge.kind)
        if best is None or (d.remaining, d.allowed) < (best.remaining, best.allowed):
            out[charge.kind] = d
    return out


async def admit(limiter: Limiter, key: KeyRecord, body_size: int, max_tokens: int, *, model: str | None = None,
                rules: LimitRules | None = None) -> Admission:
    """Take this request from the key's limits, and from its limits on ``model`` when ``rules`` give it
    some, or raise `RateLimited` having taken nothing."""
    scope = rules.scope(key, model) if rules is not None and model is not None else None
    admission = Admission()
    # A charge is capped at the whole bucket: an estimate (a 200 KB body of mostly cached prompt, Claude
    # Code's max_tokens of 32,000) above the limit would otherwise be refused forever, and the SDKs would
    # keep retrying it. The refund after the answer brings it down to what was really used.
    costs = (1, max(1, body_size // BYTES_PER_TOKEN), max_tokens)
    charges = [Charge(kind, None, Take(name, min(costs[i], quota.limit), quota))
               for i, kind, name, quota in _key_buckets(key.id, key.rpm, key.itpm, key.otpm)]
    if scope is not None:
        wanted = {"rpm": costs[0], "itpm": costs[1], "otpm": costs[2]}
        charges += [Charge(kind, scope.model, Take(name, min(wanted[kind], quota.limit), quota))
                    for kind, name, quota in scope.buckets]
    slots: list[tuple[str, int, str | None]] = []
    if key.max_concurrency is not None:
        slots.append((_slot_name(key.id), key.max_concurrency, None))
    if scope is not None and scope.slot is not None:
        slots.append((*scope.slot, scope.model))
    # Buckets and slots in one call: one round trip to a shared (Redis) limiter.
    decisions, full = await limiter.admit([c.take for c in charges], [(name, limit) for name, limit, _ in slots])
    if charges:
        # With the key's own buckets alone there is one of each kind: nothing to choose between.
        admission.headers = headers_for(
            tightest(charges, decisions) if scope is not None
            else {c.kind: d for c, d in zip(charges, decisions, strict=True)})
        if not all(d.allowed for d in decisions):
            refused = [(c, d) for c, d in zip(charges, decisions, strict=True) if not d.allowed]
            wait = max(d.retry_after for _, d in refused)
            raise RateLimited(_refusal([c for c, _ in refused]),
                              headers={**admission.headers, "retry-after": str(max(1, math.ceil(wait)))})
    if full is not None:
        _, limit, on = slots[full]
        # No ratelimit headers: nothing was taken.
        where = f" on {on}, its limit for that model" if on is not None else ", its limit"
        raise RateLimited(f"This key already has {limit} requests in flight{where}.", headers={"retry-after": "1"})
    admission.takes, admission.untils = charges, [d.reset_at for d in decisions]
    admission.slots = [name for name, _, _ in slots]
    return admission


def _refusal(refused: list[Charge]) -> str:
    """Which limits refused, key-wide first, e.g. "the key's rate limit for output tokens per minute on
    claude-opus-4-6"."""
    parts = []
    for model in dict.fromkeys(c.model for c in refused):
        which = ", ".join(_HEADER_NAMES[c.kind].replace("-", " ") for c in refused if c.model == model)
        parts.append(f"the key's rate limit for {which} per minute" + (f" on {model}" if model else ""))
    return f"This request would exceed {' and '.join(parts)}."


async def settle(limiter: Limiter, admission: Admission, input_tokens: int, output_tokens: int) -> None:
    """Give back the estimate above the real counts in every bucket taken from, and the concurrency slots."""
    refunds = []
    for (kind, _, take), until in zip(admission.takes, admission.untils, strict=True):
        if kind == "rpm":
            continue
        used = input_tokens if kind == "itpm" else output_tokens
        if take.cost > used:
            refunds.append(Take(take.name, take.cost - used, take.quota, until))
    if refunds or admission.slots:
        await limiter.finish(refunds, admission.slots)  # one round trip to a shared limiter
