"""``/metrics`` for ``tollway serve --workers N``: every worker's figures, whichever worker the scrape reaches.

The workers share one port, so a scraper reaches one of them at random, and each keeps its own totals. Each
worker therefore writes its metric families to a file of its own in a directory the parent made, once a
``PERIOD`` (in a thread, off the request path), and the worker that answers a scrape adds the others' files
to its own fresh figures, every series labelled with its ``worker`` (0 to N-1; a worker started again after a
crash keeps its number, and its counters start again from zero, which Prometheus reads as a counter reset).
The others' figures are at most ``PERIOD`` old. Sum over ``worker`` for the whole server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("tollway.metrics")

PERIOD = 1.0
SUFFIX = ".metrics.json"


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker this process is, and where the workers leave their figures for each other."""

    index: int
    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / f"{self.index}{SUFFIX}"


def dumps(families: Iterable[Metric]) -> bytes:
    return orjson.dumps([{"name": f.name, "documentation": f.documentation, "type": f.type,
                          "samples": [[s.name, s.labels, s.value] for s in f.samples]} for f in families])


def loads(raw: bytes) -> list[Metric]:
    from prometheus_client.core import Metric

    out = []
    for f in orjson.loads(raw):
        family = Metric(f["name"], f["documentation"], f["type"])
        for name, labels, value in f["samples"]:
            family.add_sample(name, labels, value)
        out.append(family)
    return out


def merged(by_worker: dict[int, list[Metric]]) -> list[Metric]:
    """One family per name, holding every worker's samples with a ``worker`` label, in the order first seen."""
    from prometheus_client.core import Metric

    out: dict[str, Metric] = {}
    for worker, families in sorted(by_worker.items()):
        for f in families:
            into = out.get(f.name)
            if into is None:
                into = out[f.name] = Metric(f.name, f.documentation, f.type)
            for s in f.samples:
                into.add_sample(s.name, {**s.labels, "worker": str(worker)}, s.value)
    return list(out.values())


def peers(slot: WorkerSlot) -> dict[int, list[Metric]]:
    """The other workers' last figures; a file half written or unreadable is skipped, never fatal to a scrape."""
    found: dict[int, list[Metric]] = {}
    for path in slot.directory.glob(f"*{SUFFIX}"):
        index = int(path.name.removesuffix(SUFFIX))
        if index == slot.index:
            continue
        try:
            found[index] = loads(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("worker %d's metrics unreadable: %s", index, exc)
    return found


def _write(slot: WorkerSlot, data: bytes) -> None:
    # Written aside and renamed: a scrape reading meanwhile sees the old file or the new one, never half of one.
    temporary = slot.directory / f".{slot.index}.{os.getpid()}.tmp"
    temporary.write_bytes(data)
    temporary.replace(slot.path)


def publisher(slot: WorkerSlot, families: Callable[[], Iterable[Metric]],
              period: float = PERIOD) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context that writes this worker's figures every ``period`` and once more at the end."""

    async def publish() -> None:
        await asyncio.to_thread(_write, slot, dumps(families()))

    async def loop() -> None:
        # The client library takes a quarter of a second to import: in a thread, the loop keeps serving.
        await asyncio.to_thread(importlib.import_module, "prometheus_client.core")
        while True:
            await asyncio.sleep(period)
            try:
                await publish()
            except OSError as exc:
                log.warning("worker %d could not write its metrics: %s", slot.index, exc)

    async def context(_: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(), name="tollway-worker-metrics")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(OSError):
                await publish()

    return context
