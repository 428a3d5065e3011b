"""Shared limits while Redis answers, local ones while it does not, and back: against a dead port, and
against the real Redis behind a proxy the test stops and starts again (the server itself is left alone)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.limits.conftest import Clock
from tests.support.pipe import pipe
from tollway.limits import Decision, MemoryLimiter, Quota, Take
from tollway.limits.fallback import FallbackLimiter
from tollway.limits.redis import RedisLimiter

BUCKET = Quota(3, period=3600.0)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Proxy:
    """A TCP relay to Redis that can be cut (every connection closed, the port refusing) and restored."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    relay = Proxy(redis_url)
    await relay.start()
    yield relay
    if relay._server is not None and relay._server.is_serving():
        await relay.stop()


def switches(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(";")[0] for r in caplog.records if r.name == "tollway.limits"]


async def test_a_dead_redis_means_local_limits_said_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    limiter = FallbackLimiter(RedisLimiter.from_url("redis://127.0.0.1:1", timeout=0.5), MemoryLimiter(clock),
                              monotonic=Monotonic())
    try:
        with caplog.at_level(logging.WARNING, "tollway.limits"):
            for i in range(3):
                (d,) = await limiter.take([Take("k:rpm", 1, BUCKET)])
                assert d.allowed and d.remaining == 2 - i
            assert not (await limiter.take([Take("k:rpm", 1, BUCKET)]))[0].allowed
            assert await limiter.acquire("k:conc", 1)
            assert not await limiter.acquire("k:conc", 1)
            await limiter.release("k:conc")
            assert await limiter.acquire("k:conc", 1)
    finally:
        await limiter.close()
    assert not limiter.is_shared and limiter.outages == 1
    (said,) = switches(caplog)
    assert said.startswith("rate limits: the shared store is unreachable (ConnectionError: ")
    assert "127.0.0.1:1" in said


async def test_limits_go_local_when_redis_goes_and_shared_when_it_returns(
        proxy: Proxy, redis_url: str, redis_prefix: str, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    monotonic = Monotonic()
    shared = RedisLimiter.from_url(f"redis://127.0.0.1:{proxy.port}", prefix=redis_prefix, clock=clock, timeout=0.5)
    limiter = FallbackLimiter(shared, MemoryLimiter(clock), retry_delay=5.0, monotonic=monotonic)
    other_replica = RedisLimiter.from_url(redis_url, prefix=redis_prefix, clock=clock)
    caplog.set_level(logging.WARNING, "tollway.limits")
    try:
        # Shared: what this replica takes, the other sees.
        assert (await limiter.take([Take("k:rpm", 1, BUCKET)]))[0].remaining == 2
        assert (await other_replica.take([Take("k:rpm", 1, BUCKET)]))[0].remaining == 1
        assert await limiter.acquire("k:conc", 1)
        assert limiter.is_shared

        await proxy.stop()
        # Local: a fresh bucket of this replica's own, and a slot counter of its own.
        assert (await limiter.take([Take("k:rpm", 1, BUCKET)]))[0].remaining == 2
        assert not limiter.is_shared
        assert await limiter.acquire("k:conc", 1)
        await limiter.release("k:conc")  # the local slot, back to the local counter
        assert await limiter.acquire("k:conc", 1)
        await limiter.release("k:conc")
        await limiter.release("k:conc")  # the shared slot: Redis is out, its lease will run out instead

        await proxy.start()
        monotonic.now += 4.9  # not yet time to try again
        assert (await limiter.take([Take("k:rpm", 1, BUCKET)]))[0].remaining == 1
        assert not limiter.is_shared
        monotonic.now += 0.2
        # Shared again: the bucket as the other replica left it, untouched by the local takes.
        assert (await limiter.take([Take("k:rpm", 1, BUCKET)]))[0].remaining == 0
        assert limiter.is_shared
        assert not (await other_replica.take([Take("k:rpm", 1, BUCKET)]))[0].allowed
        # The slot taken in Redis before the outage still counts until its lease runs out.
        assert not await other_replica.acquire("k:conc", 1)
        clock.now += shared.lease + 1
        assert await other_replica.acquire("k:conc", 1)
    finally:
        await limiter.close()
        await other_replica.close()
    assert limiter.outages == 1
    assert [m.split(" (")[0] for m in switches(caplog)] == [
        "rate limits: the shared store is unreachable", "rate limits: the shared store is back"]


class Unreachable:
    """A shared limiter that is never there, counting how often it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def take(self, takes: Sequence[Take]) -> list[Decision]:
        self.calls += 1
        await asyncio.sleep(0.01)
        raise RedisConnectionError("down")

    async def refund(self, takes: Sequence[Take]) -> None:
        raise AssertionError("not called here")

    async def acquire(self, name: str, limit: int) -> bool:
        raise AssertionError("not called here")

    async def release(self, name: str) -> None:
        raise AssertionError("not called here")

    async def admit(self, takes: Sequence[Take], slots: Sequence[tuple[str, int]]) -> tuple[list[Decision], int | None]:
        raise AssertionError("not called here")

    async def finish(self, refunds: Sequence[Take], slots: Sequence[str]) -> None:
        raise AssertionError("not called here")


async def test_one_call_at_a_time_tries_redis_again(clock: Clock) -> None:
    shared, monotonic = Unreachable(), Monotonic()
    limiter = FallbackLimiter(shared, MemoryLimiter(clock), retry_delay=5.0, monotonic=monotonic)
    await limiter.take([Take("k:rpm", 1, BUCKET)])
    assert shared.calls == 1
    await asyncio.gather(*(limiter.take([Take("k:rpm", 0, BUCKET)]) for _ in range(10)))
    assert shared.calls == 1
    monotonic.now += 5.0
    await asyncio.gather(*(limiter.take([Take("k:rpm", 0, BUCKET)]) for _ in range(10)))
    assert shared.calls == 2
    assert limiter.outages == 1


async def test_an_error_that_is_not_an_outage_is_raised(clock: Clock) -> None:
    class Broken(Unreachable):
        async def take(self, takes: Sequence[Take]) -> list[Decision]:
            raise ResponseError("ERR Error running script")

    limiter = FallbackLimiter(Broken(), MemoryLimiter(clock))
    with pytest.raises(ResponseError):
        await limiter.take([Take("k:rpm", 1, BUCKET)])
    assert limiter.is_shared


async def test_a_redis_that_does_not_answer_costs_one_timeout_then_limits_go_local(clock: Clock) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monotonic = Monotonic()
    limiter = FallbackLimiter(RedisLimiter.from_url(f"redis://127.0.0.1:{port}", timeout=0.2), MemoryLimiter(clock),
                              monotonic=monotonic)
    try:
        started = time.monotonic()
        (d,) = await limiter.take([Take("k:rpm", 1, BUCKET)])
        # One timeout, not retried: the script might have run, and a retry would charge twice.
        assert d.allowed and time.monotonic() - started < 0.35
        assert not limiter.is_shared
        started = time.monotonic()
        await limiter.take([Take("k:rpm", 1, BUCKET)])
        assert time.monotonic() - started < 0.05  # local until the next try
    finally:
        await limiter.close()
        server.close()
        await server.wait_closed()
