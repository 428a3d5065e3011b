"""The contract every limiter backend keeps, run against each (`limiter` in conftest: memory and Redis)."""

from __future__ import annotations

import asyncio

import pytest

from tests.limits.conftest import Clock
from tollway.limits import Decision, Limiter, Quota, Take

RPM = Quota(60)  # one a second, sixty at most


async def test_a_full_bucket_allows_its_limit_then_refuses(limiter: Limiter, clock: Clock) -> None:
    for i in range(60):
        (d,) = await limiter.take([Take("k:rpm", 1, RPM)])
        assert d.allowed and d.remaining == 59 - i
    (d,) = await limiter.take([Take("k:rpm", 1, RPM)])
    assert not d.allowed and d.remaining == 0
    assert d.retry_after == pytest.approx(1.0)
    clock.now += 1.0
    (d,) = await limiter.take([Take("k:rpm", 1, RPM)])
    assert d.allowed


async def test_weighted_costs_and_reset_time(limiter: Limiter, clock: Clock) -> None:
    tokens = Quota(1000)
    (d,) = await limiter.take([Take("k:itpm", 400, tokens)])
    assert d.allowed and d.remaining == 600
    assert d.reset_at == pytest.approx(clock.now + 24.0)  # 400 tokens refill in 24 s
    (d,) = await limiter.take([Take("k:itpm", 700, tokens)])
    assert not d.allowed and d.retry_after == pytest.approx(6.0)  # 100 more tokens take 6 s
    (d,) = await limiter.take([Take("k:itpm", 5000, tokens)])
    assert not d.allowed and d.retry_after == pytest.approx(60.0)


async def test_all_or_nothing(limiter: Limiter) -> None:
    small = Quota(1)
    await limiter.take([Take("k:otpm", 1, small)])
    decisions = await limiter.take([Take("k:rpm", 1, RPM), Take("k:otpm", 1, small)])
    assert [d.allowed for d in decisions] == [True, False]
    # Nothing was taken from the rpm bucket by the refused request.
    (d,) = await limiter.take([Take("k:rpm", 1, RPM)])
    assert d.remaining == 59


async def test_refund_gives_units_back(limiter: Limiter) -> None:
    tokens = Quota(1000)
    await limiter.take([Take("k:otpm", 1000, tokens)])
    await limiter.refund([Take("k:otpm", 700, tokens)])
    (d,) = await limiter.take([Take("k:otpm", 700, tokens)])
    assert d.allowed


async def test_names_are_independent(limiter: Limiter) -> None:
    one = Quota(1)
    assert (await limiter.take([Take("a", 1, one)]))[0].allowed
    assert (await limiter.take([Take("b", 1, one)]))[0].allowed
    assert not (await limiter.take([Take("a", 1, one)]))[0].allowed


async def test_concurrency_slots(limiter: Limiter) -> None:
    assert await limiter.acquire("k:conc", 2)
    assert await limiter.acquire("k:conc", 2)
    assert not await limiter.acquire("k:conc", 2)
    await limiter.release("k:conc")
    assert await limiter.acquire("k:conc", 2)


async def test_exact_under_concurrency(limiter: Limiter) -> None:
    results = await asyncio.gather(*(limiter.take([Take("k:rpm", 1, RPM)]) for _ in range(500)))
    assert sum(d.allowed for (d,) in results) == 60


async def test_a_refund_never_frees_capacity_twice(limiter: Limiter, clock: Clock) -> None:
    tokens = Quota(1000)
    (a,) = await limiter.take([Take("k:otpm", 1000, tokens)])
    clock.now += 30
    (b,) = await limiter.take([Take("k:otpm", 500, tokens)])
    assert a.allowed and b.allowed
    clock.now += 1
    # A used nothing; half its charge has already come back on its own, so only the rest may be refunded.
    await limiter.refund([Take("k:otpm", 1000, tokens, a.reset_at)])
    (c,) = await limiter.take([Take("k:otpm", 1000, tokens)])
    assert not c.allowed  # B's 500 are still out


async def test_a_refusal_reports_what_the_other_buckets_still_hold(limiter: Limiter, clock: Clock) -> None:
    small = Quota(1)
    await limiter.take([Take("k:otpm", 1, small)])
    clock.now += 15
    decisions = await limiter.take([Take("k:rpm", 1, RPM), Take("k:otpm", 1, small)])
    # The rpm bucket would have allowed: it reports itself as it stands, untouched.
    assert decisions[0] == Decision(True, 60, 60, clock.now, 0.0)
    assert decisions[1][:4] == (False, 1, 0, clock.now + 45)
    assert decisions[1].retry_after == pytest.approx(45.0)


async def test_a_cost_of_zero_reads_a_bucket_without_taking(limiter: Limiter) -> None:
    await limiter.take([Take("k:rpm", 5, RPM)])
    for _ in range(3):
        (d,) = await limiter.take([Take("k:rpm", 0, RPM)])
        assert d.allowed and d.remaining == 55


async def test_a_refund_to_a_bucket_never_taken_from_gives_nothing(limiter: Limiter) -> None:
    await limiter.refund([Take("k:rpm", 30, RPM)])
    await limiter.refund([])
    (d,) = await limiter.take([Take("k:rpm", 1, RPM)])
    assert d.remaining == 59


async def test_a_refund_is_capped_at_a_full_bucket(limiter: Limiter, clock: Clock) -> None:
    await limiter.take([Take("k:rpm", 10, RPM)])
    clock.now += 5
    await limiter.refund([Take("k:rpm", 10, RPM)])
    (d,) = await limiter.take([Take("k:rpm", 0, RPM)])
    assert d.remaining == 60 and d.reset_at == clock.now


async def test_a_release_without_a_slot_frees_nothing(limiter: Limiter) -> None:
    await limiter.release("k:conc")
    assert await limiter.acquire("k:conc", 1)
    assert not await limiter.acquire("k:conc", 1)


async def test_slots_are_exact_under_concurrency(limiter: Limiter) -> None:
    results = await asyncio.gather(*(limiter.acquire("k:conc", 7) for _ in range(100)))
    assert sum(results) == 7


async def test_admit_takes_buckets_and_slots_together_or_nothing(limiter: Limiter) -> None:
    takes = [Take("k:rpm", 1, RPM), Take("k:otpm", 10, Quota(100))]
    decisions, full = await limiter.admit(takes, [("k:slot", 1), ("k:model-slot", 5)])
    assert full is None and all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [59, 90]
    # The first slot is full: nothing is taken from the buckets, nor from the second slot.
    decisions, full = await limiter.admit(takes, [("k:slot", 1), ("k:model-slot", 5)])
    assert full == 0
    (probe,) = await limiter.take([Take("k:otpm", 0, Quota(100))])
    assert probe.remaining == 90
    assert await limiter.acquire("k:model-slot", 2)  # one held by the first admit, this one: two of two
    assert not await limiter.acquire("k:model-slot", 2)


async def test_admit_tries_no_slot_when_a_bucket_refuses(limiter: Limiter) -> None:
    decisions, full = await limiter.admit([Take("k:big", 200, Quota(100))], [("k:slot", 1)])
    assert full is None and not decisions[0].allowed
    assert await limiter.acquire("k:slot", 1)  # the slot was left free


async def test_finish_refunds_and_releases_together(limiter: Limiter, clock: Clock) -> None:
    take = Take("k:otpm", 80, Quota(100))
    (decision,), _ = await limiter.admit([take], [("k:slot", 1)])
    await limiter.finish([Take("k:otpm", 70, take.quota, decision.reset_at)], ["k:slot"])
    (probe,) = await limiter.take([Take("k:otpm", 0, Quota(100))])
    assert probe.remaining == 90
    assert await limiter.acquire("k:slot", 1)  # released
