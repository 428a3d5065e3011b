"""A clock the tests move by hand, so bucket arithmetic is exact; and every limiter backend, to run the same
tests against each (the Redis one on the ``redis_url`` and ``redis_prefix`` fixtures of tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import REDIS_URL, redis_problem
from tollway.limits import Limiter, MemoryLimiter
from tollway.limits.redis import RedisLimiter

BACKENDS = ["memory", "redis"]
__all__ = ["REDIS_URL", "redis_problem"]  # for tests/cluster


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


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
