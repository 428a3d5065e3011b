"""The policy over each real limiter backend (`limiter` in conftest): key-wide and model-scoped buckets taken
together or not at all, the tightest of each kind in the headers, a 429 that names the limit, refunds and
concurrency slots."""

from __future__ import annotations

import pytest

from tests.limits.conftest import Clock
from tests.limits.test_rules import OPUS, SONNET, make_key, rule
from tollway.config import RateLimits
from tollway.errors import RateLimited
from tollway.limits import Decision, Limiter, LimitRules, Quota, Take
from tollway.limits.policy import Charge, admit, settle, tightest
from tollway.store import KeyRecord


async def left(limiter: Limiter, name: str, limit: int) -> int:
    """What bucket ``name`` holds now, read by taking nothing from it."""
    (d,) = await limiter.take([Take(name, 0, Quota(limit))])
    return d.remaining


async def refused(limiter: Limiter, key: KeyRecord, rules: LimitRules | None = None, model: str = OPUS,
                  max_tokens: int = 1) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await admit(limiter, key, 40, max_tokens, model=model, rules=rules)
    return caught.value


async def test_without_rules_only_the_key_record_counts(limiter: Limiter) -> None:
    key = make_key(rpm=2, otpm=1000)
    admission = await admit(limiter, key, 400, 300)
    assert [(c.kind, c.model, c.take.name, c.take.cost) for c in admission.takes] == [
        ("rpm", None, "key_a:rpm", 1), ("otpm", None, "key_a:otpm", 300)]
    assert admission.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert admission.headers["anthropic-ratelimit-output-tokens-remaining"] == "700"
    assert admission.headers["anthropic-ratelimit-tokens-remaining"] == "700"
    await admit(limiter, key, 400, 300, model=OPUS, rules=LimitRules())
    error = await refused(limiter, key)
    assert error.message == "This request would exceed the key's rate limit for requests per minute."


async def test_a_key_with_every_rate_limit_gets_all_twelve_headers_in_order(limiter: Limiter) -> None:
    # The clock starts at 1,000,000 s: the request bucket is full again 6 s later, input tokens (100 of 1,000 a
    # minute) also 6 s later, output tokens (300 of 500) 36 s later.
    key = make_key(rpm=10, itpm=1000, otpm=500)
    admission = await admit(limiter, key, 400, 300)
    assert list(admission.headers.items()) == [
        ("anthropic-ratelimit-requests-limit", "10"), ("anthropic-ratelimit-requests-remaining", "9"),
        ("anthropic-ratelimit-requests-reset", "1970-01-12T13:46:46Z"),
        ("anthropic-ratelimit-input-tokens-limit", "1000"), ("anthropic-ratelimit-input-tokens-remaining", "900"),
        ("anthropic-ratelimit-input-tokens-reset", "1970-01-12T13:46:46Z"),
        ("anthropic-ratelimit-output-tokens-limit", "500"), ("anthropic-ratelimit-output-tokens-remaining", "200"),
        ("anthropic-ratelimit-output-tokens-reset", "1970-01-12T13:47:16Z"),
        # Output tokens are the closer to running out, so "tokens" repeats them.
        ("anthropic-ratelimit-tokens-limit", "500"), ("anthropic-ratelimit-tokens-remaining", "200"),
        ("anthropic-ratelimit-tokens-reset", "1970-01-12T13:47:16Z")]
    roomy = await admit(limiter, make_key("key_b", rpm=10, itpm=1000, otpm=5000), 400, 300)
    assert [roomy.headers[f"anthropic-ratelimit-tokens-{part}"] for part in ("limit", "remaining", "reset")] == [
        "1000", "900", "1970-01-12T13:46:46Z"]


async def test_a_key_whose_limits_change_is_charged_by_its_new_limits(limiter: Limiter) -> None:
    # A key's buckets are worked out once per key and limits: a changed limit must not reuse the old ones.
    first = await admit(limiter, make_key(rpm=10, otpm=500), 40, 300)
    assert first.headers["anthropic-ratelimit-output-tokens-limit"] == "500"
    again = await admit(limiter, make_key(rpm=20, otpm=1000, max_concurrency=3), 40, 300)
    assert [(c.kind, c.take.cost, c.take.quota.limit) for c in again.takes] == [("rpm", 1, 20), ("otpm", 300, 1000)]
    assert again.headers["anthropic-ratelimit-requests-limit"] == "20"
    assert again.slots == ["key_a:concurrency"]


async def test_both_scopes_are_taken_and_the_headers_show_the_tightest(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=3, otpm=5000)})
    key = make_key(rpm=100, otpm=1000, itpm=10)
    admission = await admit(limiter, key, 400, 900, model=OPUS, rules=rules)
    assert {c.take.name: c.take.cost for c in admission.takes} == {
        "key_a:rpm": 1, "key_a:itpm": 10, "key_a:otpm": 900, f"key_a:{OPUS}:rpm": 1, f"key_a:{OPUS}:otpm": 900}
    h = admission.headers
    # Requests: the model's 3 (2 left) is tighter than the key's 100 (99 left).
    assert (h["anthropic-ratelimit-requests-limit"], h["anthropic-ratelimit-requests-remaining"]) == ("3", "2")
    # Output tokens: the key's 1000 (100 left) is tighter than the model's 5000 (4100 left).
    assert (h["anthropic-ratelimit-output-tokens-limit"],
            h["anthropic-ratelimit-output-tokens-remaining"]) == ("1000", "100")
    assert (h["anthropic-ratelimit-input-tokens-limit"], h["anthropic-ratelimit-input-tokens-remaining"]) == ("10", "0")
    assert h["anthropic-ratelimit-tokens-remaining"] == "0"
    assert await left(limiter, f"key_a:{OPUS}:rpm", 3) == 2
    assert await left(limiter, "key_a:rpm", 100) == 99


async def test_tokens_repeats_input_tokens_on_a_tie_whichever_scope_came_first(limiter: Limiter) -> None:
    # The key's output-token bucket is listed before the model's input-token bucket; both end up empty.
    rules = LimitRules({OPUS: RateLimits(itpm=50)})
    admission = await admit(limiter, make_key(otpm=200), 400, 200, model=OPUS, rules=rules)
    h = admission.headers
    assert (h["anthropic-ratelimit-input-tokens-remaining"], h["anthropic-ratelimit-output-tokens-remaining"]) == (
        "0", "0")
    assert h["anthropic-ratelimit-tokens-limit"] == "50"
    assert list(h)[-3:] == [f"anthropic-ratelimit-tokens-{part}" for part in ("limit", "remaining", "reset")]


async def test_a_model_refusal_takes_nothing_from_the_key_wide_buckets(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=1)})
    key = make_key(rpm=10, otpm=1000)
    await admit(limiter, key, 40, 100, model=OPUS, rules=rules)
    error = await refused(limiter, key, rules, max_tokens=100)
    assert error.message == f"This request would exceed the key's rate limit for requests per minute on {OPUS}."
    assert error.headers["retry-after"] == "60"
    assert error.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert error.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert await left(limiter, "key_a:rpm", 10) == 9
    assert await left(limiter, "key_a:otpm", 1000) == 900
    # The key's other models have no such limit, and the key-wide buckets still hold what they did.
    await admit(limiter, key, 40, 100, model=SONNET, rules=rules)
    assert await left(limiter, "key_a:rpm", 10) == 8


async def test_a_key_wide_refusal_takes_nothing_from_the_model_buckets(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=10, otpm=5000)})
    key = make_key(otpm=1000)
    await admit(limiter, key, 40, 1000, model=SONNET, rules=rules)
    error = await refused(limiter, key, rules, max_tokens=500)
    assert error.message == "This request would exceed the key's rate limit for output tokens per minute."
    assert await left(limiter, f"key_a:{OPUS}:rpm", 10) == 10
    assert await left(limiter, f"key_a:{OPUS}:otpm", 5000) == 5000


async def test_a_refusal_by_both_scopes_names_both_and_waits_for_the_longer(limiter: Limiter,
                                                                           clock: Clock) -> None:
    rules = LimitRules({OPUS: RateLimits(otpm=100)})
    key = make_key(rpm=1)
    await admit(limiter, key, 40, 50, model=OPUS, rules=rules)
    clock.now += 10
    error = await refused(limiter, key, rules, max_tokens=100)
    assert error.message == ("This request would exceed the key's rate limit for requests per minute and the "
                             f"key's rate limit for output tokens per minute on {OPUS}.")
    # The key's request comes back in 50 s, the model's 100 output tokens fit in 20 s: the longer counts.
    assert error.headers["retry-after"] == "50"
    assert error.headers["anthropic-ratelimit-output-tokens-remaining"] == "66"


def test_the_tightest_bucket_of_each_kind_and_on_a_tie_the_refusing_one() -> None:
    def charge(kind: str, model: str | None) -> Charge:
        return Charge(kind, model, Take("x", 1, Quota(10)))

    charges = [charge("rpm", None), charge("otpm", None), charge("rpm", OPUS), charge("otpm", OPUS)]
    decisions = [Decision(True, 10, 5, 0.0, 0.0), Decision(True, 100, 7, 0.0, 0.0),
                 Decision(True, 3, 2, 0.0, 0.0), Decision(False, 50, 7, 0.0, 4.0)]
    assert tightest([c.kind for c in charges], decisions) == {"rpm": decisions[2], "otpm": decisions[3]}


async def test_each_key_and_each_model_has_its_own_model_buckets(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=1), SONNET: RateLimits(rpm=1)})
    a, b = make_key("key_a", "team-a"), make_key("key_b", "team-b")
    for key in (a, b):
        for model in (OPUS, SONNET):
            await admit(limiter, key, 40, 1, model=model, rules=rules)
    await refused(limiter, a, rules, model=SONNET)
    await refused(limiter, b, rules, model=OPUS)


async def test_a_key_rule_replaces_the_model_default_for_that_key_only(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=1)}, [rule("team-a", OPUS, rpm=3)])
    a, b = make_key("key_a", "team-a"), make_key("key_b", "team-b")
    for _ in range(3):
        await admit(limiter, a, 40, 1, model=OPUS, rules=rules)
    await refused(limiter, a, rules)
    await admit(limiter, b, 40, 1, model=OPUS, rules=rules)
    await refused(limiter, b, rules)


async def test_settle_refunds_every_bucket_it_took_from(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=10, itpm=5000, otpm=2000)})
    key = make_key(itpm=1000, otpm=1000)
    admission = await admit(limiter, key, 4000, 1500, model=OPUS, rules=rules)
    # Charged: 1000 tokens of input estimate from the key (its whole bucket), 1000 from the model; output
    # capped at the key's 1000 and the model's 1500.
    assert {c.take.name: c.take.cost for c in admission.takes} == {
        "key_a:itpm": 1000, "key_a:otpm": 1000, f"key_a:{OPUS}:rpm": 1, f"key_a:{OPUS}:itpm": 1000,
        f"key_a:{OPUS}:otpm": 1500}
    await settle(limiter, admission, 300, 100)
    assert await left(limiter, "key_a:itpm", 1000) == 700
    assert await left(limiter, "key_a:otpm", 1000) == 900
    assert await left(limiter, f"key_a:{OPUS}:itpm", 5000) == 4700
    assert await left(limiter, f"key_a:{OPUS}:otpm", 2000) == 1900
    assert await left(limiter, f"key_a:{OPUS}:rpm", 10) == 9  # a request is never given back


async def test_model_concurrency_is_its_own_slot(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(max_concurrency=1)})
    key = make_key(max_concurrency=2)
    first = await admit(limiter, key, 40, 1, model=OPUS, rules=rules)
    assert first.slots == ["key_a:concurrency", f"key_a:{OPUS}:concurrency"]
    error = await refused(limiter, key, rules)
    assert error.message == f"This key already has 1 requests in flight on {OPUS}, its limit for that model."
    assert error.headers == {"retry-after": "1"}
    # The refused request gave its key-wide slot back: another model still fits beside the first request.
    other = await admit(limiter, key, 40, 1, model=SONNET, rules=rules)
    error = await refused(limiter, key, rules, model=SONNET)
    assert error.message == "This key already has 2 requests in flight, its limit."
    await settle(limiter, first, 0, 0)
    await settle(limiter, other, 0, 0)
    again = await admit(limiter, key, 40, 1, model=OPUS, rules=rules)
    assert again.slots == first.slots


async def test_a_concurrency_refusal_gives_the_rate_charges_back(limiter: Limiter) -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=5, max_concurrency=1)})
    key = make_key(rpm=5, otpm=1000)
    await admit(limiter, key, 40, 100, model=OPUS, rules=rules)
    await refused(limiter, key, rules, max_tokens=100)
    assert await left(limiter, "key_a:rpm", 5) == 4
    assert await left(limiter, "key_a:otpm", 1000) == 900
    assert await left(limiter, f"key_a:{OPUS}:rpm", 5) == 4


async def test_a_key_without_limits_of_its_own_is_limited_by_a_model_rule(limiter: Limiter) -> None:
    rules = LimitRules(key_limits=[rule("key_a", OPUS, otpm=100)])
    key = make_key()
    assert rules.applies(key, OPUS)
    admission = await admit(limiter, key, 40, 80, model=OPUS, rules=rules)
    assert [c.take.name for c in admission.takes] == [f"key_a:{OPUS}:otpm"]
    assert admission.headers["anthropic-ratelimit-output-tokens-remaining"] == "20"
    assert "anthropic-ratelimit-requests-limit" not in admission.headers
    error = await refused(limiter, key, rules, max_tokens=80)
    assert error.message == f"This request would exceed the key's rate limit for output tokens per minute on {OPUS}."
