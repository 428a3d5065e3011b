"""Messages between replicas on a real Redis: each hears the others, not itself; the CLI's one-shot announce."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis

from tollway.pubsub import CHANGES, Bus, announce


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(300):  # up to 3 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_replica_hears_the_others_and_the_cli_but_not_itself(redis_url: str, redis_prefix: str) -> None:
    heard: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    a, b = Bus(redis_url, redis_prefix), Bus(redis_url, redis_prefix)
    a.on(CHANGES, heard["a"].append)
    b.on(CHANGES, heard["b"].append)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.listening and b.listening)
        a.publish(CHANGES, what="keys")
        await until(lambda: len(heard["b"]) == 1)
        assert heard["b"][0]["what"] == "keys" and heard["a"] == []
        assert await asyncio.to_thread(announce, redis_url, redis_prefix, CHANGES)
        await until(lambda: len(heard["a"]) == 1 and len(heard["b"]) == 2)
        assert heard["a"][0]["from"] == "cli"
        plain = redis.Redis.from_url(redis_url)
        plain.publish(f"{redis_prefix}{CHANGES}", b"not json")  # ignored, and the listener goes on
        plain.close()
        a.publish(CHANGES)
        await until(lambda: len(heard["b"]) == 3)
    finally:
        await a.close()
        await b.close()


def test_announcing_with_redis_away_says_so_and_does_not_raise() -> None:
    assert announce("redis://127.0.0.1:1/0", "tollway:", CHANGES) is False
