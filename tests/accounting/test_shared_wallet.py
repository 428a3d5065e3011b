"""What only the Redis wallet does, on a real Redis: replicas sharing one balance, seeds from the store,
top-ups counted once, a Redis that lost its state, and settles that could not reach it. (What both wallets
do is the contract in test_wallet.py.)

The store is below the layer under test here: each test says what it holds through a `Store` of its own
(the seed source); the wallet's whole path with the real store is in tests/api/test_shared_balances.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tollway.accounting.shared_wallet import SharedWallet
from tollway.accounting.wallet import Hold, Refusal, Seed
from tollway.errors import Overloaded
from tollway.limits.redis import connect
from tollway.store import Budget, LedgerEntry

PREPAID = Budget(prepaid=True)
NOON = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()


class Store:
    """What the store holds for each owner, as a seed reads it."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.spent: dict[str, dict[str, int]] = {}
        self.rows: set[str] = set()
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.last_request_us: int | None = None

    async def seed(self, owner: str, late: Sequence[str]) -> Seed:
        self.asked.append((owner, tuple(sorted(late))))
        return Seed(self.balances.get(owner, 0), self.marks.get(owner, 0), self.spent.get(owner, {}),
                    frozenset(r for r in late if r in self.rows), self.last_request_us)


Make = Callable[..., SharedWallet]


@pytest.fixture
async def make(redis_url: str, redis_prefix: str) -> AsyncIterator[Make]:
    """Wallets on one Redis prefix: each one a replica."""
    made: list[SharedWallet] = []

    def wallet(store: Store, entries: list[LedgerEntry] | None = None, *, grace: float = 0.0,
               clock: Callable[[], float] = lambda: NOON, url: str = redis_url) -> SharedWallet:
        sink = (entries if entries is not None else []).append
        # A long timeout for the live Redis: hundreds of calls at once on a busy machine must not time out.
        timeout = 5.0 if url == redis_url else 0.5
        w = SharedWallet(connect(url, timeout=timeout), store.seed, sink, prefix=redis_prefix, grace=grace,
                         retry_delay=0.05, clock=clock, owns_client=True)
        made.append(w)
        return w

    yield wallet
    for w in made:
        await w.close()


async def funded(w: SharedWallet, store: Store, owner: str, balance: int, budget: Budget = PREPAID) -> None:
    store.balances[owner] = balance
    w.set_budget(owner, budget)


def topup(entry_id: int, owner: str, amount: int) -> tuple[int, LedgerEntry]:
    return entry_id, LedgerEntry(0, owner, "topup", amount)


async def live(w: SharedWallet, owner: str) -> tuple[int, int]:
    purse = (await w.snapshot([owner]))[owner]
    return purse.balance, purse.held


async def test_a_reserve_seeds_the_owner_then_settles_at_the_real_cost(make: Make) -> None:
    store, entries = Store(), list[LedgerEntry]()
    w = make(store, entries)
    await funded(w, store, "key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold) and len(hold.tokens) == 1
    assert await live(w, "key_a") == (700, 300)
    await w.settle(hold, 120)
    assert await live(w, "key_a") == (880, 0)
    token = hold.tokens[0]
    assert [(e.kind, e.amount_nanousd, e.request_id, e.note) for e in entries] == [
        ("reserve", -300, "req_1", f"seed {token}"), ("settle", 180, "req_1", None)]
    assert store.asked == [("key_a", ())]  # seeded once, from the store


async def test_requests_arriving_together_for_a_new_owner_read_the_store_once(make: Make) -> None:
    store = Store()
    w = make(store)
    await funded(w, store, "key_a", 10_000)
    holds = await asyncio.gather(*(w.reserve(f"req_{i}", ["key_a"], 100) for i in range(20)))
    assert all(isinstance(h, Hold) for h in holds)
    assert store.asked == [("key_a", ())]
    assert await live(w, "key_a") == (8_000, 2_000)


async def test_replicas_share_one_balance_and_never_overdraw_it(make: Make) -> None:
    store = Store()
    replicas = [make(store) for _ in range(3)]
    for w in replicas:
        await funded(w, store, "key_a", 10 * 300 + 299)  # room for ten reserves, not eleven
    results = await asyncio.gather(*(replicas[i % 3].reserve(f"req_{i}", ["key_a"], 300) for i in range(300)))
    holds = [r for r in results if isinstance(r, Hold)]
    assert len(holds) == 10
    assert {r.reason for r in results if isinstance(r, Refusal)} == {"balance"}
    assert await live(replicas[0], "key_a") == (299, 3000)
    await asyncio.gather(*(replicas[i % 3].settle(h, 100) for i, h in enumerate(holds)))
    assert await live(replicas[1], "key_a") == (10 * 300 + 299 - 1000, 0)


async def test_a_cap_counts_the_spend_the_store_had_at_the_seed(make: Make) -> None:
    store = Store()
    clock = [NOON]
    w = make(store, clock=lambda: clock[0])
    capped = Budget(cap_nanousd=1000, cap_period="day")
    w.set_budget("key_a", capped)
    store.spent["key_a"] = {"2026-11-25": 600, "2026-11": 900}
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold)
    refused = await w.reserve("req_2", ["key_a"], 200)
    assert isinstance(refused, Refusal) and refused.reason == "cap" and refused.available == 100
    assert refused.resets_at == datetime(2026, 11, 26, tzinfo=UTC)
    await w.settle(hold, 50)
    assert isinstance(await w.reserve("req_3", ["key_a"], 350), Hold)  # 1000 - 650 = 350 left
    clock[0] += 86_400  # the next day starts from zero (less what is still held)
    assert isinstance(await w.reserve("req_4", ["key_a"], 600), Hold)


async def test_a_top_up_is_counted_once_however_many_replicas_read_it(make: Make) -> None:
    store = Store()
    a, b = make(store), make(store)
    await funded(a, store, "key_a", 1000)
    store.marks["key_a"] = 7  # the seed already counts top-ups up to entry 7
    b.set_budget("key_a", PREPAID)
    await a.seed("key_a")
    await a.credit([topup(7, "key_a", 500), topup(9, "key_a", 250)])  # 7 is counted in the seed
    await b.credit([topup(9, "key_a", 250)])  # the same entry, read by the other replica
    assert await live(b, "key_a") == (1250, 0)
    await b.credit([topup(3, "unseeded_owner", 100)])  # no hash: its seed will count it
    assert await b.snapshot(["unseeded_owner"]) == {}


async def test_taking_money_back_checks_the_live_balance_and_its_entry_is_not_applied_twice(make: Make) -> None:
    store = Store()
    w = make(store)
    await funded(w, store, "key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 700)
    assert isinstance(hold, Hold)
    written: list[int] = []

    async def write() -> None:
        written.append(1)

    assert not await w.take_back("key_a", 400, write)  # 300 left while the request runs
    assert await w.take_back("key_a", 300, write) and written == [1]
    await w.credit([topup(11, "key_a", -300)])  # the take-back's own entry, read back from the store
    assert await live(w, "key_a") == (0, 700)

    async def broken() -> None:
        raise RuntimeError("the store refused the write")

    await w.settle(hold, 0)
    with pytest.raises(RuntimeError):
        await w.take_back("key_a", 200, broken)
    assert await live(w, "key_a") == (700, 0)  # given back


async def test_after_redis_lost_its_state_owners_are_seeded_again_once_the_grace_has_passed(
        make: Make, redis_url: str, redis_prefix: str) -> None:
    store, entries = Store(), list[LedgerEntry]()
    clock = [NOON]
    w = make(store, entries, grace=0.3, clock=lambda: clock[0])
    await funded(w, store, "key_a", 1000)
    store.last_request_us = int(NOON * 1_000_000)  # requests were being served a moment ago
    with pytest.raises(Overloaded):  # a new Redis: every replica gets the grace to flush first
        await w.reserve("req_0", ["key_a"], 100)
    await asyncio.sleep(0.35)
    running = await w.reserve("req_1", ["key_a"], 300)
    closed = await w.reserve("req_2", ["key_a"], 300)
    assert isinstance(running, Hold) and isinstance(closed, Hold)
    await w.settle(closed, 100)
    # Redis restarts (keeps nothing). By then the store has req_2 closed, req_1 reserved only.
    plain = aioredis.Redis.from_url(redis_url)
    await plain.delete(*[k async for k in plain.scan_iter(match=f"{redis_prefix}*")])
    store.balances["key_a"] = 1000 - 100
    await w.settle(running, 120)  # closes while its owner has no state: kept aside
    with pytest.raises(Overloaded) as refused:
        await w.reserve("req_3", ["key_a"], 100)
    assert refused.value.status == 529 and refused.value.headers["retry-after"] == "1"
    await asyncio.sleep(0.35)
    assert isinstance(await w.reserve("req_3", ["key_a"], 100), Hold)
    # The seed counted the late request at its whole cost: 1000 - 100 - 120, less req_3's reserve.
    assert await live(w, "key_a") == (1000 - 100 - 120 - 100, 100)
    assert store.asked[-1] == ("key_a", ("req_1",))
    await plain.aclose()


async def running_then_lost(make: Make, redis_url: str, redis_prefix: str) -> tuple[Store, SharedWallet, Hold,
                                                                                     aioredis.Redis]:
    """A wallet with one request running on key_a when Redis loses key_a's hash."""
    store = Store()
    w = make(store)
    await funded(w, store, "key_a", 1000)
    running = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(running, Hold)
    plain = aioredis.Redis.from_url(redis_url)
    await plain.delete(f"{redis_prefix}w:key_a")
    return store, w, running, plain


async def test_a_new_cluster_with_a_quiet_store_needs_no_grace(make: Make) -> None:
    store = Store()
    w = make(store, grace=60.0)
    await funded(w, store, "key_a", 1000)
    store.last_request_us = int((NOON - 61) * 1_000_000)  # nothing written by a request in the last minute
    assert isinstance(await w.reserve("req_1", ["key_a"], 100), Hold)
    store.last_request_us = int((NOON - 59) * 1_000_000)
    await funded(w, store, "key_b", 1000)
    with pytest.raises(Overloaded):  # one was: the grace applies (the epoch began with key_a's seed)
        await w.reserve("req_2", ["key_b"], 100)


async def test_a_late_request_the_store_already_has_is_not_counted_twice(make: Make, redis_url: str,
                                                                          redis_prefix: str) -> None:
    store, w, running, plain = await running_then_lost(make, redis_url, redis_prefix)
    await w.settle(running, 120)
    store.balances["key_a"], store.rows = 1000 - 120, {"req_1"}  # its entries were flushed before the seed
    await w.seed("key_a")
    assert await live(w, "key_a") == (880, 0)
    assert store.asked[-1] == ("key_a", ("req_1",))
    assert not await plain.exists(f"{redis_prefix}w:late:key_a")
    await plain.aclose()


async def test_a_settle_that_cannot_reach_redis_is_retried_and_applied_once(make: Make,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    w = make(store)
    await funded(w, store, "key_a", 1000)
    hold = await w.reserve("req_1", ["key_a"], 300)
    assert isinstance(hold, Hold)
    real = w._settle
    calls: list[int] = []

    async def flaky(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RedisConnectionError("connection refused")
        if len(calls) == 2:
            await real(**kwargs)  # ran in Redis, but its reply was lost
            raise RedisConnectionError("connection reset")
        return await real(**kwargs)

    monkeypatch.setattr(w, "_settle", flaky)
    await w.settle(hold, 100)  # the request is not failed for it
    assert w.unsettled == 1
    await wait_for(lambda: w.unsettled == 0)
    assert len(calls) == 3
    assert await live(w, "key_a") == (900, 0)  # once, though it ran twice


async def test_with_redis_unreachable_a_money_request_gets_529_not_free_service(make: Make) -> None:
    store = Store()
    w = make(store, url="redis://127.0.0.1:1/0")
    await funded(w, store, "key_a", 1000)
    with pytest.raises(Overloaded) as refused:
        await w.reserve("req_1", ["key_a"], 100)
    assert refused.value.headers == {"retry-after": "1"} and w.outages >= 1
    assert isinstance(await w.reserve("req_2", ["key_free"], 100), Hold)  # no money limit: no Redis needed


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(250):  # up to 5 s
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_a_request_noted_late_after_the_seed_looked_is_looked_up_too(make: Make, redis_url: str,
                                                                            redis_prefix: str) -> None:
    store, w, running, plain = await running_then_lost(make, redis_url, redis_prefix)
    real_seed = store.seed

    async def slow_seed(owner: str, late: Sequence[str]) -> Seed:
        seed = await real_seed(owner, late)
        if len(store.asked) == 2:  # the first was the seed before req_1 started
            # While the first look at the store runs, req_1 ends, and its entries reach the store.
            await w.settle(running, 120)
            store.balances["key_a"], store.rows = 1000 - 120, {"req_1"}
        return seed

    w._seed_source = slow_seed
    await w.seed("key_a")
    assert [late for _, late in store.asked[1:]] == [(), ("req_1",)]  # looked again, and found it stored
    assert await live(w, "key_a") == (880, 0)  # counted once, not twice
    await plain.aclose()


async def test_a_request_reserved_before_a_new_seed_settles_at_its_whole_cost(make: Make, redis_url: str,
                                                                               redis_prefix: str) -> None:
    _, w, running, plain = await running_then_lost(make, redis_url, redis_prefix)
    await w.seed("key_a")  # the store's sum leaves req_1 out: it has not closed
    assert await live(w, "key_a") == (1000, 0)
    await w.settle(running, 120)
    assert await live(w, "key_a") == (880, 0)  # not 1000 + 300 - 120, nor a negative hold
    await plain.aclose()
