"""Read-only reports over the usage rows for the dashboard: time series, top keys and models, the recent
rows with filters, and each upstream's latency and error rate.

Everything is computed from the store, not from this process's memory, so every replica shows the same
figures. The queries run on SQLite and PostgreSQL alike: time buckets are formatted as UTC text on both
(SQLite keeps UTC text already; PostgreSQL's timestamptz is converted to UTC first, whatever the session's
time zone), and empty buckets are filled in here rather than by either database's series functions.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Integer, func, or_, select

from tollway.store import schema
from tollway.store.records import UsageRecord
from tollway.store.rows import aware
from tollway.store.sql import SQLStore

Step = Literal["hour", "day"]
STEPS: dict[Step, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# Text forms of a bucket's start, one per database, equal for the same instant.
_SQLITE_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}
_PG_FORMAT = {"hour": "YYYY-MM-DD HH24:00", "day": "YYYY-MM-DD"}
_PY_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}
UPSTREAM_SAMPLE = 10_000
"""Rows read at most for the upstreams' figures: the newest, so a busy gateway's page stays quick."""


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanousd: int = 0


@dataclass(frozen=True, slots=True)
class Top:
    """One key's or model's share of a period."""

    id: str | None
    name: str | None
    requests: int
    errors: int
    tokens: int
    cost_nanousd: int


@dataclass(frozen=True, slots=True)
class RequestRow:
    """A usage row as the requests page lists it: with its row number (for paging) and its key's name."""

    id: int
    key_name: str | None
    usage: UsageRecord

    @property
    def tries(self) -> int:
        return len(orjson.loads(self.usage.tries)) if self.usage.tries else 1


@dataclass(slots=True)
class UpstreamStats:
    """One upstream's tries in the sample: how many, how many failed, and how fast its answers came."""

    upstream: str
    tries: int = 0
    failed: int = 0
    latency_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.failed / self.tries if self.tries else 0.0

    def percentile(self, which: Literal["latency_ms", "ttfb_ms"], q: float) -> float | None:
        values: list[float] = sorted(self.latency_ms if which == "latency_ms" else self.ttfb_ms)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What the requests page narrows the rows to; None: any."""

    key: str | None = None
    """A key's id or name."""
    model: str | None = None
    upstream: str | None = None
    status: str | None = None
    """``ok`` (below 400), ``error`` (400 and above), or one status code."""


def bucket_starts(now: datetime, step: Step, count: int) -> list[datetime]:
    """The starts of the ``count`` buckets up to and including the one ``now`` is in, oldest first."""
    now = now.astimezone(UTC)
    last = now.replace(minute=0, second=0, microsecond=0)
    if step == "day":
        last = last.replace(hour=0)
    return [last - STEPS[step] * i for i in range(count - 1, -1, -1)]


class Reports:
    """The dashboard's queries on one store. A database out of reach raises `StoreUnavailable`, as the
    store's own reads do (its connection helper is shared for that)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self._postgres = store.dialect == "postgresql"

    def _bucket(self, step: Step) -> Any:
        u = schema.usage
        if self._postgres:
            return func.to_char(func.timezone("UTC", u.c.created_at), _PG_FORMAT[step])
        return func.strftime(_SQLITE_FORMAT[step], u.c.created_at)

    def _by_name(self, column: Any) -> list[Any]:
        """Ties by name, the nameless last, with text compared by bytes on both databases."""
        return [column.is_(None), column.collate("C") if self._postgres else column]

    async def series(self, step: Step, count: int, now: datetime | None = None) -> list[Bucket]:
        """Requests, errors, tokens and cost per hour or per UTC day, the last ``count`` of them, oldest first;
        buckets without a request are there with zeros."""
        u = schema.usage
        starts = bucket_starts(now or datetime.now(UTC), step, count)
        bucket = self._bucket(step).label("bucket")
        query = (select(bucket, func.count(), func.sum((u.c.status >= 400).cast(Integer)),
                        func.sum(u.c.input_tokens), func.sum(u.c.output_tokens), func.sum(u.c.cost_nanousd))
                 .where(u.c.created_at >= starts[0]).group_by(bucket))
        async with self.store._connect() as conn:
            found = {str(r[0]): r for r in await conn.execute(query)}
        out = []
        for start in starts:
            r = found.get(start.strftime(_PY_FORMAT[step]))
            out.append(Bucket(start) if r is None else Bucket(start, int(r[1]), int(r[2] or 0), int(r[3] or 0),
                                                              int(r[4] or 0), int(r[5] or 0)))
        return out

    async def top(self, by: Literal["key", "model"], since: datetime, limit: int = 5) -> list[Top]:
        """The keys or models with the most requests since ``since``, most first (ties by name)."""
        u, k = schema.usage, schema.keys
        tokens = func.sum(u.c.input_tokens + u.c.output_tokens + u.c.cache_creation_input_tokens
                          + u.c.cache_read_input_tokens)
        heads: list[Any] = [u.c.key_id, k.c.name] if by == "key" else [u.c.model, u.c.model]
        requests = func.count().label("requests")
        query = (select(*heads, requests, func.sum((u.c.status >= 400).cast(Integer)), tokens,
                        func.sum(u.c.cost_nanousd))
                 .select_from(u.outerjoin(k, u.c.key_id == k.c.id))
                 .where(u.c.created_at >= since)
                 .group_by(*dict.fromkeys(heads))
                 .order_by(requests.desc(), *self._by_name(heads[1]), heads[0]).limit(limit))
        async with self.store._connect() as conn:
            rows = list(await conn.execute(query))
        return [Top(r[0], r[1], int(r[2]), int(r[3] or 0), int(r[4] or 0), int(r[5] or 0)) for r in rows]

    async def requests(self, where: RequestFilter, limit: int = 100, before: int | None = None) -> list[RequestRow]:
        """The newest rows matching ``where``, newest first; ``before``: only rows older than that row id."""
        u, k = schema.usage, schema.keys
        query = (select(u, k.c.name.label("key_name")).select_from(u.outerjoin(k, u.c.key_id == k.c.id))
                 .order_by(u.c.id.desc()).limit(limit))
        if before is not None:
            query = query.where(u.c.id < before)
        if where.key is not None:
            query = query.where(or_(u.c.key_id == where.key, k.c.name == where.key))
        if where.model is not None:
            query = query.where(u.c.model == where.model)
        if where.upstream is not None:
            query = query.where(u.c.upstream == where.upstream)
        if where.status == "ok":
            query = query.where(u.c.status < 400)
        elif where.status == "error":
            query = query.where(u.c.status >= 400)
        elif where.status is not None:
            query = query.where(u.c.status == int(where.status))
        async with self.store._connect() as conn:
            rows = list(await conn.execute(query))
        out = []
        for r in rows:
            values = {f: getattr(r, f) for f in UsageRecord._fields}
            values["created_at"] = aware(values["created_at"])
            out.append(RequestRow(int(r.id), r.key_name, UsageRecord(**values)))
        return out

    async def upstreams(self, since: datetime, sample: int = UPSTREAM_SAMPLE) -> list[UpstreamStats]:
        """Each upstream's tries since ``since`` among the newest ``sample`` rows, by name.

        A row that needed several tries lists them, and each counts against its own upstream (a failover is
        the first upstream's failure, not the second's); a row with one try is that try. Latencies are those
        of the answers an upstream gave (status below 400), the time to the whole answer and to its first
        byte."""
        u = schema.usage
        query = (select(u.c.upstream, u.c.status, u.c.latency_ms, u.c.ttfb_ms, u.c.tries)
                 .where(u.c.created_at >= since, u.c.upstream.is_not(None) | u.c.tries.is_not(None))
                 .order_by(u.c.id.desc()).limit(sample))
        async with self.store._connect() as conn:
            rows = list(await conn.execute(query))
        stats: dict[str, UpstreamStats] = {}
        for upstream, status, latency, ttfb, tries in rows:
            attempts: Sequence[dict[str, Any]] = orjson.loads(tries) if tries else (
                {"upstream": upstream, "status": status, "error": None},)
            for attempt in attempts:
                name = attempt.get("upstream")
                if not name:
                    continue
                s = stats.setdefault(name, UpstreamStats(name))
                s.tries += 1
                if attempt.get("error") or int(attempt.get("status") or 0) >= 400:
                    s.failed += 1
            if upstream is not None and status < 400:
                s = stats.setdefault(upstream, UpstreamStats(upstream))
                s.latency_ms.append(float(latency))
                if ttfb is not None:
                    s.ttfb_ms.append(float(ttfb))
        return [stats[name] for name in sorted(stats)]
