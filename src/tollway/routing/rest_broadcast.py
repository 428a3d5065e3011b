"""Rests told to every replica through Redis: one replica's 429 rests that key for all of them.

Each replica keeps its own `HealthBoard` and reads it on the request path with no round trip; a rest it
decides is published on the ``rests`` topic of the `tollway.pubsub.Bus`, and every replica applies what the
others publish. Rests are durations, not times, so replicas' clocks need not agree. Redis away: each replica
rests on its own knowledge, as with one replica.
"""

from __future__ import annotations

from typing import Any

from tollway.pubsub import Bus
from tollway.routing.health import HealthBoard

TOPIC = "rests"


class RestBroadcast:
    def __init__(self, bus: Bus, board: HealthBoard) -> None:
        self._bus = bus
        self._board = board
        bus.on(TOPIC, self._apply)

    def publish(self, upstream: str, key: int | None, seconds: float, rate_limited: bool, error: str) -> None:
        self._bus.publish(TOPIC, upstream=upstream, key=key, seconds=seconds, rate_limited=rate_limited, error=error)

    def _apply(self, rest: dict[str, Any]) -> None:
        self._board.rest_from_peer(str(rest["upstream"]), rest["key"], float(rest["seconds"]),
                                   bool(rest["rate_limited"]), str(rest["error"]))
