"""A clock the tests move by hand, so bucket arithmetic is exact; and every limiter backend, to run the same
tests against each.

The Redis backend runs against ``$TOLLWAY_TEST_REDIS_URL`` (default: the local server). Each test gets keys
of its own under a fresh prefix, deleted afterwards. Without a reachable Redis those tests skip and say why,
except under CI (``$CI`` set), where they fail: there a missing Redis is a broken setup, not a choice.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tollway.limits import Limiter, MemoryLimiter
from tollway.limits.redis import RedisLimiter

REDIS_URL = os.environ.get("TOLLWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ["memory", "redis"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@functools.cache
def redis_problem() -> str | None:
    """Why the test Redis cannot be used, or None when it answers. Asked once per run."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    return None


@pytest.fixture
def redis_url() -> str:
    problem = redis_problem()
    if problem is not None:
        message = f"Redis at {REDIS_URL} is unreachable ({problem}); set TOLLWAY_TEST_REDIS_URL or start redis-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"tollway-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=BACKENDS)
async def limiter(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter(clock)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    shared = RedisLimiter.from_url(url, prefix=prefix, clock=clock)
    try:
        yield shared
    finally:
        await shared.close()
