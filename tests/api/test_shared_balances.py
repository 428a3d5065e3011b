"""Balances shared by three replicas through Redis, on one PostgreSQL database, with the official SDK as the
client: a prepaid key spread over every replica can no more be overdrawn than on one."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import redis
import redis.asyncio as aioredis

from tests.api.test_balances import MODEL, PREPAID, reserve_of
from tests.conftest import Gateway, PostgresDatabases, Upstream, gateway_config
from tollway.config import LimitsConfig, StorageConfig

Cluster = tuple[Gateway, Gateway, Gateway]


@pytest.fixture
def cluster(upstream: Upstream, postgres_databases: PostgresDatabases, redis_url: str,
            redis_prefix: str) -> Iterator[Cluster]:
    url = postgres_databases.create_migrated("shared_balances")
    base = gateway_config(upstream.url, Path("unused.db"))
    config = dataclasses.replace(base, storage=StorageConfig(url=url, flush_interval=0.05, key_refresh_interval=0.3),
                                 # A long Redis timeout: the tests are about money, and 300 requests at once on a
                                 # busy two-core machine can keep a call waiting past the default second (a 529).
                                 limits=LimitsConfig(url=redis_url, prefix=redis_prefix, timeout=10.0))
    gateways = (Gateway(config), Gateway(config), Gateway(config))
    try:
        yield gateways
    finally:
        for gateway in gateways:
            gateway.server.close()


def live_and_stored(cluster: Cluster, owner: str) -> tuple[int, int, int]:
    """The live balance and what Redis holds for running requests, and the ledger's sum in the store, once
    every replica has flushed."""
    for gateway in cluster:
        gateway.server.thread.run(gateway.services.ledger.flush())
    first = cluster[0]
    purse = first.server.thread.run(first.services.funds.snapshot([owner]))[owner]
    stored, _ = first.server.thread.run(first.services.store.balances())
    return purse.balance, purse.held, stored.get(owner, 0)


def warm(gateway: Gateway, secret: str) -> None:
    """One request with the SDK's own retries: a Redis new to the cluster answers 529 with retry-after for
    its first seconds (see `SharedWallet`), which the SDK waits out."""
    client = anthropic.Anthropic(api_key=secret, base_url=gateway.url, max_retries=5)
    client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "warm"}])


def test_hundreds_of_requests_spread_over_three_replicas_never_overdraw_a_small_balance(
        cluster: Cluster, upstream: Upstream) -> None:
    first = cluster[0]
    secret = first.create_key("crowd", budget=PREPAID)
    key_id = first.key_id("crowd")
    first.topup(key_id, 1_000_000_000)
    warm(first, secret)
    balance, held, stored = live_and_stored(cluster, key_id)
    assert held == 0 and balance == stored < 1_000_000_000
    # Take the balance down to room for three requests in flight at once, never a fourth.
    reserve = reserve_of(first, "crowd", 16)
    room = 3 * reserve + 1000
    first.server.thread.run(first.services.store.topup(key_id, room - balance))
    for gateway in cluster:  # each replica reads the top-up; Redis counts it once
        gateway.server.thread.run(gateway.services.funds.refresh())
    assert live_and_stored(cluster, key_id) == (room, 0, room)
    before = {r.request_id for r in first.usage()}
    upstream.fake.peak = 0

    async def burst() -> list[int | str]:
        clients = [anthropic.AsyncAnthropic(api_key=secret, base_url=g.url, max_retries=0,
                                            default_headers={"x-fake-scenario": "stall:0.5"}) for g in cluster]

        async def one(i: int) -> int | str:
            try:
                await clients[i % 3].messages.create(model=MODEL, max_tokens=16,
                                                     messages=[{"role": "user", "content": "crowd"}])
                return 200
            except anthropic.APIStatusError as exc:
                return str(exc.response.json()["error"]["type"])

        try:
            return await asyncio.gather(*(one(i) for i in range(300)))
        finally:
            for client in clients:
                await client.close()

    results = asyncio.run(burst())
    served = results.count(200)
    assert set(results) <= {200, "billing_error"}
    assert served >= 3
    assert upstream.fake.peak <= 3  # never more in flight, over all replicas, than the balance covers
    balance, held, stored = live_and_stored(cluster, key_id)  # flushes every replica's rows
    rows = [r for r in first.usage() if r.request_id not in before]  # the store holds every replica's rows
    assert len({r.request_id for r in rows}) == len(rows) == 300  # one row per request, none twice
    assert sum(r.status == 200 for r in rows) == served and all(r.key_id == key_id for r in rows)
    spent = sum(r.cost_nanousd or 0 for r in rows)
    assert held == 0
    assert balance == stored == room - spent >= 0


def test_a_top_up_reaches_every_replica_once_and_a_revoked_balance_stops_them_all(cluster: Cluster) -> None:
    first, second, third = cluster
    secret = first.create_key("topped", budget=PREPAID)
    key_id = first.key_id("topped")
    first.topup(key_id, 1_000_000_000)
    warm(second, secret)
    deadline = time.monotonic() + 5
    # The other replicas pick the top-up up on their own refresh; it must not be counted again by them.
    while True:
        balance, held, stored = live_and_stored(cluster, key_id)
        if balance == stored and held == 0:
            break
        assert time.monotonic() < deadline, (balance, held, stored)
        time.sleep(0.1)
    time.sleep(0.7)  # two more refreshes on every replica
    assert live_and_stored(cluster, key_id)[0] == stored
    # All of it taken back through one replica: every replica now refuses the key with 402.
    first.server.thread.run(first.services.store.topup(key_id, -stored))
    first.server.thread.run(first.services.funds.refresh())
    for gateway in (third, second, first):
        with pytest.raises(anthropic.APIStatusError) as refused:
            gateway.client(secret).messages.create(model=MODEL, max_tokens=16,
                                                   messages=[{"role": "user", "content": "more"}])
        assert refused.value.status_code == 402
    assert live_and_stored(cluster, key_id) == (0, 0, 0)


def test_after_redis_loses_every_balance_mid_load_the_rebuilt_ones_match_the_ledger(
        cluster: Cluster, redis_url: str, redis_prefix: str) -> None:
    first = cluster[0]
    secret = first.create_key("survivor", budget=PREPAID)
    key_id = first.key_id("survivor")
    first.topup(key_id, 10_000_000_000)  # room for all 120 in flight at once (each reserves about $0.025)
    warm(first, secret)

    seeds: list[bytes | str | None] = []

    async def load() -> list[int]:
        # The SDK's own retries wait out the 529s of the grace after the loss.
        clients = [anthropic.AsyncAnthropic(api_key=secret, base_url=g.url, max_retries=6,
                                            default_headers={"x-fake-scenario": "stall:0.3"}) for g in cluster]
        done: list[int] = []
        half_done = asyncio.Event()

        async def one(i: int) -> int:
            await asyncio.sleep((i % 60) * 0.02)
            # Some long ones reserve before the loss and end after the balance is seeded again.
            scenario = {"x-fake-scenario": "stall:4"} if i % 5 == 0 else None
            await clients[i % 3].messages.create(model=MODEL, max_tokens=16, extra_headers=scenario,
                                                 messages=[{"role": "user", "content": "survive"}])
            done.append(i)
            if len(done) == 30:
                half_done.set()
            return 200

        before = [asyncio.ensure_future(one(i)) for i in range(60)]
        await half_done.wait()  # a loss mid-load, however slow the machine: half of the first wave has ended
        plain = aioredis.Redis.from_url(redis_url)
        try:  # what a restart of a Redis that keeps nothing on disk leaves: no key at all
            seeds.append(await plain.hget(f"{redis_prefix}w:{key_id}", "e"))
            await plain.delete(*[k async for k in plain.scan_iter(match=f"{redis_prefix}*")])
        finally:
            await plain.aclose()
        try:  # a second wave reserves after the loss, so the balance must be seeded again
            return list(await asyncio.gather(*before, *(one(i) for i in range(60, 120))))
        finally:
            for client in clients:
                await client.close()

    assert asyncio.run(load()) == [200] * 120
    balance, held, stored = live_and_stored(cluster, key_id)
    assert held == 0
    assert balance == stored  # the live balance rebuilt after the loss is the ledger's, to the nano-dollar
    assert 0 < stored < 10_000_000_000
    statuses = [r.status for r in first.usage() if r.key_id == key_id]
    assert statuses.count(200) == 121 and set(statuses) <= {200, 529}  # 529: the grace, retried by the SDK
    plain = redis.Redis.from_url(redis_url)
    try:  # the balance was seeded again after the loss, not carried over
        assert seeds[0] is not None and plain.hget(f"{redis_prefix}w:{key_id}", "e") not in (None, seeds[0])
    finally:
        plain.close()
