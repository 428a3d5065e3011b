"""Rests told to every replica through Redis: one replica's 429 rests that key for all of them.

Each replica keeps its own `HealthBoard` and reads it on the request path with no round trip; a rest it
decides is published on a Redis channel, and every replica applies what the others publish. Rests are
durations, not times, so replicas' clocks need not agree. Redis away: each replica rests on its own
knowledge (as with one replica) and the listener tries again every ``RETRY`` seconds; the log says when it
lost Redis and when it listens again, not every try in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tollway.routing.health import HealthBoard

log = logging.getLogger("tollway.routing")
RETRY = 1.0


class RestBroadcast:
    def __init__(self, url: str, prefix: str, board: HealthBoard, timeout: float = 1.0) -> None:
        self._client: Redis = Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout)
        self._channel = f"{prefix}rests"
        self._board = board
        self._me = secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.received = 0
        self.listening = False
        """Subscribed on Redis now: rests from the other replicas arrive."""
        self._lost_at: float | None = None

    def publish(self, upstream: str, key: int | None, seconds: float, rate_limited: bool, error: str) -> None:
        """Tell the other replicas (without waiting: the request that failed goes on at once)."""
        message = orjson.dumps({"from": self._me, "upstream": upstream, "key": key, "seconds": seconds,
                                "rate_limited": rate_limited, "error": error})
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, message: bytes) -> None:
        try:
            await self._client.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            log.warning("could not tell the other replicas of a rest: %s", exc)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="tollway-rest-listener")

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.listening = True
                    if self._lost_at is not None:
                        log.warning("rests from other replicas arrive again (after %.1f s without)",
                                    loop.time() - self._lost_at)
                        self._lost_at = None
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message.get("data"))
            except (RedisError, OSError) as exc:
                self.listening = False
                if self._lost_at is None:
                    self._lost_at = loop.time()
                    log.warning("rests from other replicas unavailable (%s); trying again every %g s", exc, RETRY)
                await asyncio.sleep(RETRY)

    def _apply(self, data: Any) -> None:
        try:
            rest = orjson.loads(data)
            if rest["from"] == self._me:
                return
            self._board.rest_from_peer(str(rest["upstream"]), rest["key"], float(rest["seconds"]),
                                       bool(rest["rate_limited"]), str(rest["error"]))
            self.received += 1
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignored a malformed rest message: %r", data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._sending):
            with contextlib.suppress(Exception):
                await task
        await self._client.aclose()
