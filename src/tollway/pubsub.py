"""Messages between replicas over Redis pub/sub: what one replica (or the CLI) learns, the others hear at once.

Used for upstream rests (one replica's 429 rests that key for all) and for changes to keys, budgets and
top-ups (a revoked key is refused everywhere within moments, not at the next reload). Each topic is a
channel under the configured prefix; a message is a JSON object that names its sender, so a replica skips
its own. Nothing depends on a message arriving: each replica still reloads on its own beat, and while Redis
is away the listener tries again every ``RETRY`` seconds, logging the loss and the return once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("tollway.pubsub")
RETRY = 1.0
CHANGES = "changes"
"""The topic on which keys, budgets and top-ups changed: whoever hears it reloads them."""
Handler = Callable[[dict[str, Any]], None]


def announce(url: str, prefix: str, topic: str, **fields: Any) -> bool:
    """Publish once from a short-lived process (the CLI), without an event loop. False if Redis is away:
    the replicas then see the change at their next reload."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.publish(f"{prefix}{topic}", orjson.dumps({"from": "cli", **fields}))
        return True
    except (RedisError, OSError):
        return False
    finally:
        client.close()


class Bus:
    def __init__(self, url: str, prefix: str, timeout: float = 1.0) -> None:
        # No socket timeout: a subscription waits for messages as long as it takes.
        self._client: Redis = Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout)
        self._prefix = prefix
        self._me = secrets.token_hex(8)
        self._handlers: dict[str, Handler] = {}
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.received = 0
        self.listening = False
        """Subscribed on Redis now: what the others publish arrives."""
        self._lost_at: float | None = None

    def on(self, topic: str, handler: Handler) -> None:
        """Call ``handler`` with each message another process publishes on ``topic`` (before `start`)."""
        self._handlers[f"{self._prefix}{topic}"] = handler

    def announce_change(self) -> None:
        self.publish(CHANGES)

    def publish(self, topic: str, **fields: Any) -> None:
        """Tell the others, without waiting (the request that learned it goes on at once)."""
        message = orjson.dumps({"from": self._me, **fields})
        task = asyncio.get_running_loop().create_task(self._send(f"{self._prefix}{topic}", message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, channel: str, message: bytes) -> None:
        try:
            await self._client.publish(channel, message)
        except (RedisError, OSError) as exc:
            log.warning("could not tell the other replicas on %s: %s", channel, exc)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="tollway-pubsub")

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(*self._handlers)
                    self.listening = True
                    if self._lost_at is not None:
                        log.warning("messages from other replicas arrive again (after %.1f s without)",
                                    loop.time() - self._lost_at)
                        self._lost_at = None
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._dispatch(message.get("channel"), message.get("data"))
            except (RedisError, OSError) as exc:
                self.listening = False
                if self._lost_at is None:
                    self._lost_at = loop.time()
                    log.warning("messages from other replicas unavailable (%s); trying again every %g s", exc,
                                RETRY)
                await asyncio.sleep(RETRY)

    def _dispatch(self, channel: Any, data: Any) -> None:
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        handler = self._handlers.get(name)
        try:
            message = orjson.loads(data)
            if not isinstance(message, dict) or message.get("from") == self._me or handler is None:
                return
            handler(message)
            self.received += 1
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignored a malformed message on %s: %r", name, data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._sending):
            with contextlib.suppress(Exception):
                await task
        await self._client.aclose()
