"""A key's rate limits, Anthropic's way: requests, input tokens and output tokens per minute, and
requests in flight.

Input tokens are not known before the upstream counts them, so a request is charged an estimate (its body
at four bytes a token, which overestimates) and refunded the difference once the real count is in. Output
tokens are charged at ``max_tokens`` and refunded down to what was produced, as Anthropic does for its
output-tokens-per-minute limit. Every answer to a limited key carries Anthropic's ``anthropic-ratelimit-*``
headers; a refusal is a 429 ``rate_limit_error`` with ``retry-after``, which the SDKs honour.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tollway.errors import RateLimited
from tollway.limits.base import Decision, Limiter, Quota, Take
from tollway.store import KeyRecord

BYTES_PER_TOKEN = 4
_HEADER_NAMES = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}


def _rfc3339(epoch: float) -> str:
    return _rfc3339_second(math.ceil(epoch))


@functools.lru_cache(maxsize=4096)
def _rfc3339_second(second: int) -> str:
    # Formatting a time is most of what the headers cost; many answers share the same reset second.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Admission:
    """What one request took, to give back what it did not use and to label its answer."""

    takes: dict[str, Take] = field(default_factory=dict)
    """What was taken, each with the ``reset_at`` it was given (so a refund cannot free capacity twice)."""
    headers: dict[str, str] = field(default_factory=dict)
    slot: str | None = None


def headers_for(decisions: dict[str, Decision]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, d in decisions.items():
        name = _HEADER_NAMES[kind]
        out[f"anthropic-ratelimit-{name}-limit"] = str(d.limit)
        out[f"anthropic-ratelimit-{name}-remaining"] = str(d.remaining)
        out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(d.reset_at)
    tokens = [decisions[k] for k in ("itpm", "otpm") if k in decisions]
    if tokens:
        # "tokens" is whichever token limit is closer to running out, as Anthropic reports it.
        tight = min(tokens, key=lambda d: d.remaining)
        out["anthropic-ratelimit-tokens-limit"] = str(tight.limit)
        out["anthropic-ratelimit-tokens-remaining"] = str(tight.remaining)
        out["anthropic-ratelimit-tokens-reset"] = _rfc3339(tight.reset_at)
    return out


async def admit(limiter: Limiter, key: KeyRecord, body_size: int, max_tokens: int) -> Admission:
    """Take this request from the key's limits, or raise `RateLimited` having taken nothing."""
    admission = Admission()
    # A charge is capped at the whole bucket: an estimate (a 200 KB body of mostly cached prompt, Claude
    # Code's max_tokens of 32,000) above the limit would otherwise be refused forever, and the SDKs would
    # keep retrying it. The refund after the answer brings it down to what was really used.
    costs = {"rpm": (key.rpm, 1),
             "itpm": (key.itpm, min(max(1, body_size // BYTES_PER_TOKEN), key.itpm or 0)),
             "otpm": (key.otpm, min(max_tokens, key.otpm or 0))}
    takes = {kind: Take(f"{key.id}:{kind}", cost, Quota(limit)) for kind, (limit, cost) in costs.items()
             if limit is not None}
    if takes:
        decisions = dict(zip(takes, await limiter.take(list(takes.values())), strict=True))
        admission.headers = headers_for(decisions)
        refused = [d for d in decisions.values() if not d.allowed]
        if refused:
            wait = max(d.retry_after for d in refused)
            which = ", ".join(_HEADER_NAMES[k].replace("-", " ") for k, d in decisions.items() if not d.allowed)
            raise RateLimited(f"This request would exceed the key's rate limit for {which} per minute.",
                              headers={**admission.headers, "retry-after": str(max(1, math.ceil(wait)))})
        admission.takes = {kind: Take(t.name, t.cost, t.quota, decisions[kind].reset_at)
                           for kind, t in takes.items()}
    if key.max_concurrency is not None:
        slot = f"{key.id}:concurrency"
        if not await limiter.acquire(slot, key.max_concurrency):
            await limiter.refund(list(admission.takes.values()))
            # No ratelimit headers: the counts above were taken and just given back.
            raise RateLimited(f"This key already has {key.max_concurrency} requests in flight, its limit.",
                              headers={"retry-after": "1"})
        admission.slot = slot
    return admission


async def settle(limiter: Limiter, admission: Admission, input_tokens: int, output_tokens: int) -> None:
    """Give back the estimate above the real counts, and the concurrency slot."""
    refunds = []
    for kind, used in (("itpm", input_tokens), ("otpm", output_tokens)):
        take = admission.takes.get(kind)
        if take is not None and take.cost > used:
            refunds.append(Take(take.name, take.cost - used, take.quota, take.until))
    if refunds:
        await limiter.refund(refunds)
    if admission.slot is not None:
        await limiter.release(admission.slot)
