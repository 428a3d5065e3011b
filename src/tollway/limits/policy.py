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
from tollway.limits.base import Decision, Limiter, Quota, Take, new_tuple
from tollway.limits.rules import LimitRules
from tollway.store import KeyRecord

BYTES_PER_TOKEN = 4
KINDS = ("rpm", "itpm", "otpm")
"""The rate limits' kinds, in the order of a request's costs: one request, its input and its output tokens."""
_HEADER_NAMES = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}
# Each kind's three header names, built once.
_HEADERS: dict[str, tuple[str, str, str]] = {
    kind: (f"anthropic-ratelimit-{name}-limit", f"anthropic-ratelimit-{name}-remaining",
           f"anthropic-ratelimit-{name}-reset") for kind, name in [*_HEADER_NAMES.items(), ("tokens", "tokens")]}
_TOKENS = _HEADERS["tokens"]
_ceil = math.ceil


class _KeyPlan(NamedTuple):
    """A key's own buckets and slot, named and sized once per key and limits rather than per request."""

    buckets: tuple[tuple[int, str, Quota, Take | None], ...]
    """(the kind's place in a request's costs, bucket name, quota, the take when it is the same every time)."""
    kinds: tuple[str, ...]
    limits: tuple[str, ...]
    """Each bucket's limit as its header shows it."""
    slots: tuple[tuple[str, int], ...]
    slot_names: tuple[str, ...]
    layout: _Layout
    """Its headers, with the limits filled in."""


@functools.lru_cache(maxsize=65_536)
def _key_plan(key_id: str, rpm: int | None, itpm: int | None, otpm: int | None,
              max_concurrency: int | None) -> _KeyPlan:
    buckets = []
    for i, (kind, limit) in enumerate(zip(KINDS, (rpm, itpm, otpm), strict=True)):
        if limit is None:
            continue
        quota = Quota(limit)
        name = f"{key_id}:{kind}"
        # A request always costs one request: that take is the same for every request of the key.
        buckets.append((i, name, quota, Take(name, min(1, limit), quota) if kind == "rpm" else None))
    slots = () if max_concurrency is None else ((f"{key_id}:concurrency", max_concurrency),)
    kinds = tuple(KINDS[i] for i, *_ in buckets)
    limits = tuple(str(q.limit) for _, _, q, _ in buckets)
    return _KeyPlan(tuple(buckets), kinds, limits, slots, tuple(name for name, _ in slots), _layout(kinds, limits))


_RESETS: dict[int, str] = {}
"""Reset times as the headers show them, by epoch second: formatting a time is most of what a header costs, and
many answers share a reset second."""


def _reset_text(second: int) -> str:
    text = _RESETS.get(second)
    if text is None:
        if len(_RESETS) >= 4096:
            _RESETS.clear()
        text = _RESETS[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return text


class Charge(NamedTuple):
    kind: str
    """``rpm``, ``itpm`` or ``otpm``."""
    model: str | None
    """The model of a model-scoped bucket; None for the key's own, across all models."""
    take: Take


class Admission(NamedTuple):
    """What one request took, to give back what it did not use and to label its answer.

    A named tuple: one is made per limited request, and this is the cheapest object to build that has named
    fields. What was taken is kept as the limiter was given it, each take's kind beside it; `takes` pairs them
    up for reading."""

    taken: list[Take]
    """What was taken: the key's own buckets first, then its buckets on ``model``."""
    kinds: Sequence[str]
    own: int
    """How many of ``taken`` are the key's own buckets."""
    model: str | None
    decisions: list[Decision]
    """What each take was answered: its ``reset_at`` bounds the refund, so that a refund cannot free capacity
    the bucket has regained on its own."""
    headers: dict[str, str]
    slots: list[str]
    """The concurrency counters held: the key's, the key's on this model, or both."""

    @property
    def takes(self) -> list[Charge]:
        return [Charge(self.kinds[i], None if i < self.own else self.model, t) for i, t in enumerate(self.taken)]


class _Layout(NamedTuple):
    """The headers of one decision per kind, in their order: filled in by copying ``template`` and setting what
    changes per request, which costs less than building the dict (twelve entries) afresh each time."""

    template: dict[str, str]
    fields: tuple[tuple[str, str, str, int], ...]
    """Per decision: its limit, remaining and reset headers, and 1 for input tokens, 2 for output tokens, 0 for
    requests ("tokens" repeats the token limit closer to running out, input tokens on a tie)."""
    limits: tuple[str, ...] | None
    """The limits as text, when known beforehand (and then already in ``template``)."""


@functools.lru_cache(maxsize=4096)
def _layout(kinds: tuple[str, ...], limits: tuple[str, ...] | None = None) -> _Layout:
    template: dict[str, str] = {}
    for i, kind in enumerate(kinds):
        limit, remaining, reset = _HEADERS[kind]
        template |= {limit: "" if limits is None else limits[i], remaining: "", reset: ""}
    if "itpm" in kinds or "otpm" in kinds:
        template |= dict.fromkeys(_TOKENS, "")
    fields = tuple((*_HEADERS[kind], KINDS.index(kind)) for kind in kinds)
    return _Layout(template, fields, limits)


def headers_for(layout: _Layout, decisions: Sequence[Decision]) -> dict[str, str]:
    """The ``anthropic-ratelimit-*`` headers of one decision per kind, as ``layout`` lays them out. Twelve
    headers on every answer to a limited key: written in as few steps as may be."""
    out = layout.template.copy()
    fields, limits = layout.fields, layout.limits
    tight: tuple[str, str, str] | None = None
    tight_remaining = 0
    for i, (_, limit, remaining, reset_at, _) in enumerate(decisions):
        limit_name, remaining_name, reset_name, tokens = fields[i]
        if limits is None:
            out[limit_name] = limit_text = str(limit)
        else:
            limit_text = limits[i]
        out[remaining_name] = remaining_text = str(remaining)
        second = _ceil(reset_at)
        try:
            reset = _RESETS[second]
        except KeyError:
            reset = _reset_text(second)
        out[reset_name] = reset
        if tokens and (tight is None or remaining < tight_remaining or (remaining == tight_remaining and tokens == 1)):
            tight, tight_remaining = (limit_text, remaining_text, reset), remaining
    if tight is not None:
        out[_TOKENS[0]], out[_TOKENS[1]], out[_TOKENS[2]] = tight
    return out


def tightest(kinds: Sequence[str], decisions: Sequence[Decision]) -> dict[str, Decision]:
    """Of each kind, the bucket with the least left: the one a client has to pace itself by. On a tie, a
    refusing bucket, since its count is the one that explains the 429."""
    out: dict[str, Decision] = {}
    for kind, d in zip(kinds, decisions, strict=True):
        best = out.get(kind)
        if best is None or (d.remaining, d.allowed) < (best.remaining, best.allowed):
            out[kind] = d
    return out


async def admit(limiter: Limiter, key: KeyRecord, body_size: int, max_tokens: int, *, model: str | None = None,
                rules: LimitRules | None = None) -> Admission:
    """Take this request from the key's limits, and from its limits on ``model`` when ``rules`` give it
    some, or raise `RateLimited` having taken nothing."""
    scope = rules.scope(key, model) if rules is not None and model is not None else None
    plan = _key_plan(key.id, key.rpm, key.itpm, key.otpm, key.max_concurrency)
    # A charge is capped at the whole bucket: an estimate (a 200 KB body of mostly cached prompt, Claude
    # Code's max_tokens of 32,000) above the limit would otherwise be refused forever, and the SDKs would
    # keep retrying it. The refund after the answer brings it down to what was really used.
    estimate = body_size // BYTES_PER_TOKEN
    costs = (1, estimate if estimate > 1 else 1, max_tokens)
    takes: list[Take] = []
    for i, name, quota, fixed in plan.buckets:
        if fixed is None:
            cost, limit = costs[i], quota.limit
            fixed = new_tuple(Take, (name, cost if cost < limit else limit, quota, None))
        takes.append(fixed)
    kinds: Sequence[str] = plan.kinds
    slots: Sequence[tuple[str, int]] = plan.slots
    if scope is not None:
        kinds = [*kinds, *(kind for kind, _, _ in scope.buckets)]
        takes += [Take(name, min(costs[KINDS.index(kind)], quota.limit), quota) for kind, name, quota in scope.buckets]
        if scope.slot is not None:
            slots = [*slots, scope.slot]
    # Buckets and slots in one call: one round trip to a shared (Redis) limiter.
    decisions, full = await limiter.admit(takes, slots)
    own = len(plan.buckets)
    scoped_model = None if scope is None else scope.model
    headers: dict[str, str] = {}
    if takes:
        if scope is None:
            # With the key's own buckets alone there is one of each kind: nothing to choose between.
            headers = headers_for(plan.layout, decisions)
        else:
            chosen = tightest(kinds, decisions)
            headers = headers_for(_layout(tuple(chosen)), list(chosen.values()))
        for d in decisions:
            if not d.allowed:
                refused = [i for i, d in enumerate(decisions) if not d.allowed]
                wait = max(decisions[i].retry_after for i in refused)
                message = _refusal([(kinds[i], None if i < own else scoped_model) for i in refused])
                raise RateLimited(message, headers={**headers, "retry-after": str(max(1, math.ceil(wait)))})
    if full is not None:
        limit = slots[full][1]
        # No ratelimit headers: nothing was taken.
        where = ", its limit" if full < len(plan.slots) else f" on {scoped_model}, its limit for that model"
        raise RateLimited(f"This key already has {limit} requests in flight{where}.", headers={"retry-after": "1"})
    names = list(plan.slot_names) if slots is plan.slots else [name for name, _ in slots]
    return new_tuple(Admission, (takes, kinds, own, scoped_model, decisions, headers, names))


def _refusal(refused: list[tuple[str, str | None]]) -> str:
    """Which limits refused, key-wide first, e.g. "the key's rate limit for output tokens per minute on
    claude-opus-4-6", from each refusing bucket's (kind, model)."""
    parts = []
    for model in dict.fromkeys(m for _, m in refused):
        which = ", ".join(_HEADER_NAMES[kind].replace("-", " ") for kind, m in refused if m == model)
        parts.append(f"the key's rate limit for {which} per minute" + (f" on {model}" if model else ""))
    return f"This request would exceed {' and '.join(parts)}."


async def settle(limiter: Limiter, admission: Admission, input_tokens: int, output_tokens: int) -> None:
    """Give back the estimate above the real counts in every bucket taken from, and the concurrency slots."""
    refunds: list[Take] = []
    kinds, decisions = admission.kinds, admission.decisions
    for i, (name, cost, quota, _) in enumerate(admission.taken):
        kind = kinds[i]
        if kind == "rpm":
            continue
        used = input_tokens if kind == "itpm" else output_tokens
        if cost > used:
            refunds.append(new_tuple(Take, (name, cost - used, quota, decisions[i].reset_at)))
    if refunds or admission.slots:
        await limiter.finish(refunds, admission.slots)  # one round trip to a shared limiter
