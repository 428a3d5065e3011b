"""Usage rows and ledger entries leave the request path at once and reach the store in batches.

`record` and `entry` only append to a list. A background task writes whatever has gathered every
``flush_interval`` seconds in one transaction. A failed write keeps the rows for the next try, up to
``MAX_PENDING``; `close` flushes what is left, so a clean shutdown loses nothing (should the database be away
then, it keeps trying for ``CLOSE_PATIENCE`` seconds, and says what it could not write).

What a process killed outright (SIGKILL, a crash) loses is what it holds and has not written: the rows and
entries recorded since the last write began, that is of the last ``flush_interval`` plus the time that write
took; while the database is away, everything recorded since it went away (up to ``MAX_PENDING`` rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tollway.accounting.refresher import Outage
from tollway.store import LedgerEntry, SQLStore, UsageRecord

log = logging.getLogger("tollway.ledger")


class UsageLedger:
    MAX_PENDING = 200_000
    CLOSE_PATIENCE = 10.0
    """Seconds `close` keeps trying to write what is left while the database is away (a restart takes a few)."""

    def __init__(self, store: SQLStore, flush_interval: float) -> None:
        self._store = store
        self._interval = flush_interval
        self._pending: list[UsageRecord] = []
        self._entries: list[LedgerEntry] = []
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
                "pending_entries": len(self._entries), "dropped_rows": self.dropped}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tollway-usage-flush")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            entries, self._entries = self._entries, []
            if not batch and not entries:
                return
            try:
                await self._store.insert_usage(batch, entries)
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

    async def close(self) -> None:
        # The loop is asked to stop, never cancelled: a cancelled write would leave its batch neither
        # written nor queued, and its connection still holding SQLite's write lock.
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
