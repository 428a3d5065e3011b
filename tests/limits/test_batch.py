"""Script calls batched into pipelines, on a real Redis: each caller its own answer or error, nothing sent twice."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tollway.limits.batch import Batcher
from tollway.limits.redis import connect

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON_NEGATIVE = "if tonumber(ARGV[1]) < 0 then return redis.error_reply('negative') end return ARGV[1]"


async def test_calls_made_together_go_as_one_pipeline_and_each_gets_its_answer(redis_url: str,
                                                                                redis_prefix: str) -> None:
    client = connect(redis_url)
    batcher = Batcher(client)
    incr = batcher.script(INCR)
    try:
        key = f"{redis_prefix}n"
        answers = await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(50)))
        assert sorted(answers) == list(range(1, 51))  # each call ran once, and each caller got its own reply
        assert batcher.batches == 1
        assert await client.get(key) == b"50"
        assert await incr(keys=[key], args=[5]) == 55  # a lone call goes as it always did
        assert batcher.batches == 1
    finally:
        await client.aclose()


async def test_a_failing_call_fails_alone(redis_url: str, redis_prefix: str) -> None:
    client = connect(redis_url)
    check = Batcher(client).script(FAIL_ON_NEGATIVE)
    try:
        results = await asyncio.gather(*(check(keys=[f"{redis_prefix}x"], args=[n]) for n in (1, -1, 2)),
                                       return_exceptions=True)
        assert results[0] == b"1" and results[2] == b"2"
        assert isinstance(results[1], ResponseError) and "negative" in str(results[1])
    finally:
        await client.aclose()


async def test_scripts_lost_by_redis_are_loaded_again(redis_url: str, redis_prefix: str) -> None:
    client = connect(redis_url)
    incr = Batcher(client).script(INCR + " -- " + redis_prefix)  # a script no other test has loaded
    try:
        key = f"{redis_prefix}n"
        assert sorted(await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(3)))) == [1, 2, 3]
        await client.script_flush()  # as a Redis restart would
        answers = await asyncio.gather(*(incr(keys=[key], args=[1]) for _ in range(4)))
        assert sorted(answers) == [4, 5, 6, 7]
    finally:
        await client.aclose()


async def test_redis_out_of_reach_fails_every_call_of_the_batch() -> None:
    client: Redis = connect("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    incr = Batcher(client).script(INCR)
    try:
        results = await asyncio.gather(*(incr(keys=["k"], args=[1]) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        await client.aclose()


async def test_a_cancelled_caller_leaves_the_others_their_answers(redis_url: str, redis_prefix: str) -> None:
    client = connect(redis_url)
    incr = Batcher(client).script(INCR)
    try:
        key = f"{redis_prefix}n"
        first = asyncio.ensure_future(incr(keys=[key], args=[1]))
        second = asyncio.ensure_future(incr(keys=[key], args=[10]))
        await asyncio.sleep(0)
        first.cancel()
        assert await second in (10, 11)
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await client.aclose()
