"""The dashboard's queries (`tollway.store.reports`) on SQLite and PostgreSQL: buckets in UTC whatever the
database's time zone, top keys and models, the requests page's filters, and each upstream's tries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tollway.accounting.keys import new_key
from tollway.store import SQLStore, UsageRecord
from tollway.store.reports import Reports, RequestFilter, bucket_starts

NOW = datetime(2026, 3, 10, 14, 25, tzinfo=UTC)


def row(n: int, at: datetime, key: str | None, model: str = "claude-sonnet-4-6", upstream: str | None = "up-a",
        status: int = 200, latency: float = 100.0, tries: list[dict[str, object]] | None = None,
        cost: int | None = 1000) -> UsageRecord:
    return UsageRecord(request_id=f"req_{n:04d}", created_at=at, key_id=key, endpoint="messages", model=model,
                       upstream=upstream, upstream_model=model, stream=False, status=status,
                       error_type=None if status < 400 else "api_error", input_tokens=10 * n, output_tokens=n,
                       latency_ms=latency, ttfb_ms=latency / 2, tries=None if tries is None else json.dumps(tries),
                       cost_nanousd=cost)


async def _keys(store: SQLStore) -> tuple[str, str]:
    ids = []
    for name in ("alpha", "beta"):
        record, _ = new_key(name, None)
        await store.insert_key(record)
        ids.append(record.id)
    return ids[0], ids[1]


def test_bucket_starts_end_with_the_current_one() -> None:
    hours = bucket_starts(NOW, "hour", 3)
    assert hours == [datetime(2026, 3, 10, h, tzinfo=UTC) for h in (12, 13, 14)]
    days = bucket_starts(NOW, "day", 2)
    assert days == [datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC)]


async def test_series_by_hour_and_day_fill_empty_buckets(store: SQLStore) -> None:
    a, b = await _keys(store)
    await store.insert_usage([
        row(1, NOW - timedelta(minutes=5), a),                 # 14:20, this hour
        row(2, NOW - timedelta(minutes=20), b, status=529),    # 14:05
        row(3, NOW - timedelta(hours=2), a, cost=None),        # 12:25
        row(4, NOW - timedelta(days=1, hours=15), a),          # the 8th, 23:25 (the 9th in UTC+14)
        row(5, NOW - timedelta(days=40), a),                   # outside either range
    ])
    reports = Reports(store)
    hours = await reports.series("hour", 24, now=NOW)
    assert len(hours) == 24 and hours[-1].start == datetime(2026, 3, 10, 14, tzinfo=UTC)
    assert (hours[-1].requests, hours[-1].errors, hours[-1].input_tokens, hours[-1].output_tokens,
            hours[-1].cost_nanousd) == (2, 1, 30, 3, 2000)
    assert (hours[-2].requests, hours[-3].requests, hours[-3].cost_nanousd) == (0, 1, 0)
    assert sum(h.requests for h in hours) == 3
    days = await reports.series("day", 30, now=NOW)
    assert [d.requests for d in days[-3:]] == [1, 0, 3]
    assert days[-3].start == datetime(2026, 3, 8, tzinfo=UTC)


async def test_top_keys_and_models(store: SQLStore) -> None:
    a, b = await _keys(store)
    await store.insert_usage([row(1, NOW, a), row(2, NOW, a, model="claude-haiku-4-5"), row(3, NOW, b),
                              row(4, NOW, None, status=401, upstream=None, cost=None),
                              row(5, NOW - timedelta(days=3), b)])
    reports = Reports(store)
    keys = await reports.top("key", NOW - timedelta(hours=1))
    assert [(t.id, t.name, t.requests) for t in keys] == [(a, "alpha", 2), (b, "beta", 1), (None, None, 1)]
    assert keys[0].tokens == 10 + 1 + 20 + 2 and keys[0].cost_nanousd == 2000 and keys[2].errors == 1
    models = await reports.top("model", NOW - timedelta(hours=1), limit=1)
    assert [(t.id, t.requests) for t in models] == [("claude-sonnet-4-6", 3)]


async def test_requests_newest_first_with_filters(store: SQLStore) -> None:
    a, b = await _keys(store)
    await store.insert_usage([row(1, NOW, a), row(2, NOW, b, model="claude-haiku-4-5", upstream="up-b"),
                              row(3, NOW, a, status=429), row(4, NOW, None, status=401, upstream=None),
                              row(5, NOW, a, tries=[{"upstream": "up-b", "status": 529, "error": "overloaded_error"},
                                                    {"upstream": "up-a", "status": 200, "error": None}])])
    reports = Reports(store)

    async def ids(where: RequestFilter = RequestFilter(), **kwargs: int) -> list[str]:  # noqa: B008
        return [r.usage.request_id[-1] for r in await reports.requests(where, **kwargs)]

    assert await ids() == ["5", "4", "3", "2", "1"]
    assert await ids(limit=2) == ["5", "4"]
    newest = await reports.requests(RequestFilter(), limit=1)
    assert newest[0].tries == 2 and newest[0].key_name == "alpha" and newest[0].usage.created_at == NOW
    assert await ids(before=newest[0].id) == ["4", "3", "2", "1"]
    assert await ids(RequestFilter(key="beta")) == ["2"]
    assert await ids(RequestFilter(key=a)) == ["5", "3", "1"]
    assert await ids(RequestFilter(model="claude-haiku-4-5")) == ["2"]
    assert await ids(RequestFilter(upstream="up-a")) == ["5", "3", "1"]
    assert await ids(RequestFilter(status="error")) == ["4", "3"]
    assert await ids(RequestFilter(status="ok")) == ["5", "2", "1"]
    assert await ids(RequestFilter(status="401", key=None)) == ["4"]


async def test_upstreams_count_every_try_against_its_own_upstream(store: SQLStore) -> None:
    a, _ = await _keys(store)
    failover = [{"upstream": "up-b", "key": 0, "status": 529, "error": "overloaded_error", "ms": 5.0},
                {"upstream": "up-a", "key": 0, "status": 200, "error": None, "ms": 50.0}]
    await store.insert_usage([
        row(1, NOW, a, latency=100), row(2, NOW, a, latency=300), row(3, NOW, a, latency=200, tries=failover),
        row(4, NOW, a, upstream="up-b", status=500, tries=[{"upstream": "up-b", "status": 500, "error": "api_error"}]),
        row(5, NOW, None, upstream=None, status=401), row(6, NOW - timedelta(hours=3), a, upstream="up-c")])
    stats = await Reports(store).upstreams(NOW - timedelta(hours=1))
    assert [s.upstream for s in stats] == ["up-a", "up-b"]
    up_a, up_b = stats
    assert (up_a.tries, up_a.failed, up_a.error_rate) == (3, 0, 0.0)
    assert (up_b.tries, up_b.failed, up_b.error_rate) == (2, 2, 1.0)
    assert up_a.percentile("latency_ms", 0.5) == 200 and up_a.percentile("ttfb_ms", 0.5) == 100
    assert up_a.percentile("latency_ms", 0.95) == 290
    assert up_b.percentile("latency_ms", 0.5) is None
