"""What only the Redis backend has to show: atomic across connections, the server's clock, keys that
expire, leases that free a dead replica's slots, and the same decisions as the in-process limiter."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.limits.conftest import Clock
from tollway.limits import MemoryLimiter, Quota, Take
from tollway.limits.redis import TTL_MARGIN_MS, RedisLimiter

Replicas = Callable[..., RedisLimiter]


@pytest.fixture
async def replica(redis_url: str, redis_prefix: str) -> AsyncIterator[Replicas]:
    """Makes limiters over the same keys, each with a client (and connections) of its own, as replicas
    would have."""
    made: list[RedisLimiter] = []

    def make(**kwargs: Any) -> RedisLimiter:
        made.append(RedisLimiter.from_url(redis_url, prefix=redis_prefix, **kwargs))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.close()


@pytest.mark.parametrize("clocked", [True, False], ids=["injected-clock", "server-clock"])
async def test_concurrent_takes_from_two_replicas_allow_exactly_the_limit(replica: Replicas, clock: Clock,
                                                                          clocked: bool) -> None:
    # A period of an hour: on the server's clock, under a unit refills while the test runs.
    bucket = Quota(50, period=3600.0)
    a, b = (replica(clock=clock if clocked else None) for _ in range(2))
    results = await asyncio.gather(*((a if i % 2 else b).take([Take("k:rpm", 1, bucket)]) for i in range(200)))
    assert sum(d.allowed for (d,) in results) == 50
    # Every allowed take saw a different count left, and each refusal saw none.
    assert sorted(d.remaining for (d,) in results if d.allowed) == list(range(50))
    assert {d.remaining for (d,) in results if not d.allowed} == {0}


async def test_concurrent_multi_bucket_takes_stay_all_or_nothing(replica: Replicas, clock: Clock) -> None:
    a, b = replica(clock=clock), replica(clock=clock)
    requests, tokens = Quota(100, period=3600.0), Quota(1000, period=3600.0)
    results = await asyncio.gather(*((a if i % 2 else b).take(
        [Take("k:rpm", 1, requests), Take("k:otpm", 30, tokens)]) for i in range(100)))
    assert sum(all(d.allowed for d in ds) for ds in results) == 33  # 33 * 30 = 990 tokens; 1,020 would not fit
    (rpm,) = await a.take([Take("k:rpm", 0, requests)])
    assert rpm.remaining == 100 - 33  # the 67 refused requests took nothing from the request bucket


async def test_every_key_expires(replica: Replicas, clock: Clock, redis_prefix: str) -> None:
    limiter = replica(clock=clock, lease=120.0)
    await limiter.take([Take("k:rpm", 30, Quota(60)), Take("k:otpm", 1, Quota(1000))])
    await limiter.acquire("k:conc", 3)
    ttls = {key.decode().removeprefix(redis_prefix): await limiter.client.pttl(key)
            async for key in limiter.client.scan_iter(match=f"{redis_prefix}*")}
    assert set(ttls) == {"rate:k:rpm", "rate:k:otpm", "slot:k:conc"}

    def lasts(ms: int, expected_ms: int) -> bool:
        # The TTL counts down from when it was set; it is rounded up to a whole millisecond.
        return expected_ms - 100 <= ms - TTL_MARGIN_MS <= expected_ms + 1

    # A bucket lives until it has refilled (when it is no different from a missing one), plus a margin.
    assert lasts(ttls["rate:k:rpm"], 30_000)
    assert lasts(ttls["rate:k:otpm"], 60)
    assert lasts(ttls["slot:k:conc"], 120_000)
    # A refund moves the expiry with the TAT.
    await limiter.refund([Take("k:rpm", 20, Quota(60))])
    assert lasts(await limiter.client.pttl(f"{redis_prefix}rate:k:rpm"), 10_000)


async def test_the_server_clock_is_used_without_an_injected_one(replica: Replicas) -> None:
    limiter = replica()
    seconds, micros = await limiter.client.time()
    server_now = seconds + micros / 1e6
    (d,) = await limiter.take([Take("k:rpm", 1, Quota(60))])
    assert d.allowed and d.remaining == 59
    assert server_now + 1.0 <= d.reset_at < server_now + 2.0
    hourly = Quota(2, period=3600.0)
    await limiter.take([Take("k:hourly", 2, hourly)])
    (d,) = await limiter.take([Take("k:hourly", 1, hourly)])
    assert not d.allowed and 1799.0 < d.retry_after <= 1800.0
    # Time moves on its own: a bucket refilling every 50 ms has one back after a sleep.
    fast = Quota(1, period=0.05)
    assert (await limiter.take([Take("k:fast", 1, fast)]))[0].allowed
    assert not (await limiter.take([Take("k:fast", 1, fast)]))[0].allowed
    await asyncio.sleep(0.08)
    assert (await limiter.take([Take("k:fast", 1, fast)]))[0].allowed


async def test_a_dead_replicas_slots_come_back_when_their_leases_run_out(replica: Replicas, clock: Clock) -> None:
    dead, alive = replica(clock=clock, lease=600.0), replica(clock=clock, lease=600.0)
    assert await dead.acquire("k:conc", 2)
    assert await dead.acquire("k:conc", 2)
    await dead.close()  # killed mid-request: its slots are never released
    assert not await alive.acquire("k:conc", 2)
    clock.now += 599
    assert not await alive.acquire("k:conc", 2)
    clock.now += 2
    assert await alive.acquire("k:conc", 2)
    assert await alive.acquire("k:conc", 2)
    assert not await alive.acquire("k:conc", 2)


async def test_a_lease_runs_out_on_the_servers_clock(replica: Replicas) -> None:
    dead, alive = replica(lease=0.1), replica(lease=0.1)
    assert await dead.acquire("k:conc", 1)
    assert not await alive.acquire("k:conc", 1)
    await asyncio.sleep(0.15)
    assert await alive.acquire("k:conc", 1)


async def test_a_replica_releases_only_the_slots_it_holds(replica: Replicas, clock: Clock) -> None:
    a, b = replica(clock=clock, lease=60.0), replica(clock=clock, lease=60.0)
    assert await a.acquire("k:conc", 1)
    await b.release("k:conc")  # holds nothing: frees nothing
    assert not await b.acquire("k:conc", 1)
    await a.release("k:conc")
    assert await b.acquire("k:conc", 1)
    # A's lease ran out and B took the slot; A releasing late must not free B's.
    assert await a.acquire("k:other", 1)
    clock.now += 61
    assert await b.acquire("k:other", 1)
    await a.release("k:other")
    assert not await a.acquire("k:other", 1)


async def test_the_same_decisions_as_the_memory_limiter(replica: Replicas, clock: Clock) -> None:
    shared, memory = replica(clock=clock), MemoryLimiter(clock)
    rng = random.Random(20240611)
    quotas = {"a": Quota(7, period=13.0), "b": Quota(60), "c": Quota(1000), "d": Quota(3, period=0.5)}
    for _ in range(600):
        names = rng.sample(sorted(quotas), rng.randint(1, 3))
        takes = [Take(n, rng.choice([0, 1, 2, 5, 50, 400, 2000]) % (quotas[n].limit * 2), quotas[n]) for n in names]
        if rng.random() < 0.3:
            untils = [None if rng.random() < 0.3 else clock.now + rng.uniform(-5, 40) for _ in takes]
            refunds = [t._replace(until=u) for t, u in zip(takes, untils, strict=True)]
            await shared.refund(refunds)
            await memory.refund(refunds)
        else:
            # Exactly equal: the same operations on the same doubles, stored as 17 significant digits.
            assert await shared.take(takes) == await memory.take(takes)
        clock.now += rng.choice([0.0, 0.001, 0.37, 1.0 / 3.0, 2.5, 17.0])


async def test_an_unreachable_redis_fails_fast_with_a_connection_error() -> None:
    limiter = RedisLimiter.from_url("redis://127.0.0.1:1", timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RedisConnectionError):
            await limiter.take([Take("k:rpm", 1, Quota(60))])
        with pytest.raises(RedisConnectionError):
            await limiter.acquire("k:conc", 1)
    finally:
        await limiter.close()
    assert time.monotonic() - started < 2.0


def test_a_lease_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lease"):
        RedisLimiter.from_url("redis://127.0.0.1:1", lease=0)
