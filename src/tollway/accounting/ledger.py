"""Usage rows and ledger entries leave the request path at once and reach the store in batches.

`record` and `entry` only append to a list. A background task writes whatever has gathered every
``flush_interval`` seconds in one transaction. A failed write keeps the rows for the next try, up to
``MAX_PENDING``; `close` flushes what is left, so a clean shutdown loses nothing (should the database be away
then, it keeps trying for ``CLOSE_PATIENCE`` seconds, and says what it could not write).

A batch the database refuses for what is in it rather than for an outage (a value out of a column's range, say,
from an upstream that reported absurd token counts) must not hold back every row after it. Its halves are
written apart, and theirs, until the requests the database refuses alone are found; when the rest goes in, those
are held apart, logged, and tried alone again (a few at each flush, in turn), so a refusal that was not about
them (a table restored since) loses nothing. When nothing of the batch goes in, it is kept whole, as for an
outage.

What a process killed outright (SIGKILL, a crash) loses is what it holds and has not written: the rows and
entries recorded since the last write began, that is of the last ``flush_interval`` plus the time that write
took; while the database is away, everything recorded since it went away (up to ``MAX_PENDING`` rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from tollway.accounting.refresher import Outage
from tollway.store import LedgerEntry, SQLStore, UsageRecord
from tollway.store.engine import unreachable

log = logging.getLogger("tollway.ledger")

Request = tuple[list[UsageRecord], list[LedgerEntry]]
"""One request's usage rows and ledger entries, which are written together or not at all."""


class UsageLedger:
    MAX_PENDING = 200_000
    CLOSE_PATIENCE = 10.0
    """Seconds `close` keeps trying to write what is left while the database is away (a restart takes a few)."""
    SPLIT_TRIES = 64
    """Writes one flush may spend finding the requests of a refused batch; what it has not reached waits for the
    next flush. A database that refuses everything costs this many quick failures a flush, no more."""
    MAX_HELD = 10_000
    HELD_TRIES = 16
    """Held requests tried at each flush, the longest waiting first: each is a write of its own."""

    def __init__(self, store: SQLStore, flush_interval: float) -> None:
        self._store = store
        self._interval = flush_interval
        self._pending: list[UsageRecord] = []
        self._entries: list[LedgerEntry] = []
        self._held: dict[str | None, Request] = {}
        """Requests (by id) the database refused alone while it took the rest: tried alone again, a few at each
        flush, the longest waiting first."""
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.dropped = 0
        self.outage = Outage(log)
        """Writes failing since when, how many tries, the last error: for the log and /healthz."""

    def record(self, row: UsageRecord) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage queue full (%d rows): %d rows dropped", self.MAX_PENDING, self.dropped)
            return
        self._pending.append(row)

    def entry(self, entry: LedgerEntry) -> None:
        # Never dropped, unlike usage rows past MAX_PENDING: a lost entry would leave a balance short.
        self._entries.append(entry)

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._entries)

    def pending_entries(self) -> int:
        return len(self._entries)

    def health(self) -> dict[str, object]:
        """For /healthz: whether writes go through, since when they fail, and what is waiting."""
        outage = self.outage
        return {"writing": not outage.failing, "failing_for_s": round(outage.failing_for(), 1),
                "failed_writes": outage.total, "last_error": outage.last_error, "pending_rows": len(self._pending),
                "pending_entries": len(self._entries), "dropped_rows": self.dropped,
                "held_requests": len(self._held)}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tollway-usage-flush")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            await self._retry_held()
            batch, self._pending = self._pending, []
            entries, self._entries = self._entries, []
            if not batch and not entries:
                return
            try:
                try:
                    await self._store.insert_usage(batch, entries)
                except Exception as exc:
                    if unreachable(exc) or not await self._split(batch, entries):
                        raise
            except BaseException as exc:
                # Rows go back in front of the queue; writing them twice is harmless, as inserts skip
                # request ids already stored, and entries already stored for their request.
                self._pending[:0] = batch
                self._entries[:0] = entries
                if not isinstance(exc, Exception):
                    raise
                self.outage.failed(exc, "writing %d usage rows and %d ledger entries failed; keeping them in memory "
                                   "for the next flush (up to %d rows)", len(self._pending), len(self._entries),
                                   self.MAX_PENDING)
            else:
                self.outage.ended("usage written to the database (%d rows, %d ledger entries)", len(batch),
                                  len(entries), level=logging.WARNING)

    async def _split(self, batch: list[UsageRecord], entries: list[LedgerEntry]) -> bool:
        """Write a refused batch in parts, request by request at the finest. False if no part went in (the batch
        is then kept whole); True once the rest is written, the requests refused alone held apart and those not
        reached queued again."""
        by_request: dict[str | None, Request] = {}
        for row in batch:
            by_request.setdefault(row.request_id, ([], []))[0].append(row)
        for entry in entries:
            by_request.setdefault(entry.request_id, ([], []))[1].append(entry)
        requests = list(by_request.items())
        if len(requests) < 2:
            return False
        tries, written = self.SPLIT_TRIES, 0
        refused: list[tuple[str | None, Request, Exception]] = []
        untried: list[Request] = []

        async def write(part: list[tuple[str | None, Request]]) -> None:
            nonlocal tries, written
            if tries <= 0:
                untried.extend(request for _, request in part)
                return
            tries -= 1
            try:
                await self._store.insert_usage([r for _, (rows, _) in part for r in rows],
                                               [e for _, (_, es) in part for e in es])
            except Exception as exc:
                if unreachable(exc):
                    raise
                if len(part) == 1:
                    refused.append((*part[0], exc))
                    return
                await write(part[:len(part) // 2])
                await write(part[len(part) // 2:])
            else:
                written += len(part)

        await write(requests[:len(requests) // 2])
        await write(requests[len(requests) // 2:])
        if not written:
            return False
        for request_id, request, exc in refused:
            self._hold(request_id, request, exc)
        for rows, request_entries in reversed(untried):
            self._pending[:0] = rows
            self._entries[:0] = request_entries
        return True

    def _hold(self, request_id: str | None, request: Request, exc: Exception) -> None:
        rows, entries = request
        if len(self._held) >= self.MAX_HELD:
            self.dropped += len(rows)
            log.error("usage of request %s refused by the database (%s: %s) and %d requests held already: "
                      "dropped (%r, %r)", request_id, type(exc).__name__, exc, self.MAX_HELD, rows, entries)
            return
        self._held[request_id] = request
        log.error("usage of request %s refused by the database while the rest of its batch was written (%s: %s): "
                  "held apart and tried alone again at the next flushes", request_id, type(exc).__name__, exc)

    async def _retry_held(self) -> None:
        # Each leaves only once written: /healthz, read between two of these writes, counts it still.
        for request_id, request in list(itertools.islice(self._held.items(), self.HELD_TRIES)):
            try:
                await self._store.insert_usage(*request)
            except Exception as exc:
                if unreachable(exc):
                    return
                self._held[request_id] = self._held.pop(request_id)  # to the back: the others' turn comes next
                continue
            del self._held[request_id]
            log.warning("usage of request %s, held apart, is written", request_id)

    async def close(self) -> None:
        # The loop is asked to stop, never cancelled: a cancelled write would leave its batch neither
        # written nor queued.
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()
        if not self.pending:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.CLOSE_PATIENCE
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(min(max(self._interval, 0.2), 1.0, max(deadline - loop.time(), 0.0)))
            await self.flush()
        if self.pending:
            log.error("stopping with %d usage rows and %d ledger entries not written (%s): they are lost",
                      len(self._pending), len(self._entries), self.outage.last_error)
        for request_id, (rows, entries) in self._held.items():
            log.error("stopping with request %s's usage still refused by the database: lost (%r, %r)",
                      request_id, rows, entries)
