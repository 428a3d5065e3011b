"""The request totals behind ``/metrics``: counts by label, histograms, tokens and cost, failovers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.store import UsageRecord
from tollway.telemetry.stats import LATENCY_BUCKETS, Histogram, RequestStats


def row(**fields: object) -> UsageRecord:
    base: dict[str, object] = {
        "request_id": "req_1", "created_at": datetime.now(UTC), "key_id": "key_1", "endpoint": "messages",
        "model": "claude-sonnet-4-6", "upstream": "fake", "upstream_model": "claude-sonnet-4-6", "stream": False,
        "status": 200, "error_type": None, "latency_ms": 12.0, "ttfb_ms": 3.0}
    return UsageRecord(**{**base, **fields})  # type: ignore[arg-type]


def stats() -> RequestStats:
    return RequestStats({"claude-sonnet-4-6", "claude-opus-4-6"}.__contains__)


def test_requests_are_counted_by_endpoint_model_upstream_status_and_error() -> None:
    s = stats()
    s.record(row())
    s.record(row())
    s.record(row(status=429, error_type="rate_limit_error", upstream=None, ttfb_ms=None))
    s.record(row(endpoint="count_tokens"))
    assert s.requests() == {
        ("messages", "claude-sonnet-4-6", "fake", "200", ""): 2,
        ("messages", "claude-sonnet-4-6", "", "429", "rate_limit_error"): 1,
        ("count_tokens", "claude-sonnet-4-6", "fake", "200", ""): 1,
    }


def test_labels_a_client_chooses_are_bounded() -> None:
    s = stats()
    for i in range(50):  # fifty made-up model names and upstream error types make two series, not fifty
        s.record(row(model=f"made-up-{i}", status=404, error_type="not_found_error"))
        s.record(row(status=502, error_type=f"weird_{i}"))
    s.record(row(model=None, status=401, error_type="authentication_error", upstream=None))
    assert s.requests() == {
        ("messages", "other", "fake", "404", "not_found_error"): 50,
        ("messages", "claude-sonnet-4-6", "fake", "502", "other"): 50,
        ("messages", "", "", "401", "authentication_error"): 1,
    }


def test_latency_and_ttfb_go_to_their_buckets_per_upstream_and_mode() -> None:
    s = stats()
    s.record(row(latency_ms=5.0, ttfb_ms=1.0))       # exactly on a bound: that bound's bucket (le)
    s.record(row(latency_ms=7000.0, ttfb_ms=None))  # no first byte: no TTFB sample
    s.record(row(stream=True, latency_ms=20.0, ttfb_ms=2.0))
    plain = s.latency()[("fake", "false")]
    assert plain.count == 2 and plain.total == pytest.approx(7.005)
    cumulative = dict(plain.cumulative())
    assert cumulative["0.005"] == 1 and cumulative["5.0"] == 1 and cumulative["10.0"] == 2
    assert cumulative["+Inf"] == 2
    assert s.ttfb()[("fake", "false")].count == 1 and dict(s.ttfb()[("fake", "false")].cumulative())["0.001"] == 1
    assert s.latency()[("fake", "true")].count == 1


def test_tokens_and_cost_add_up_by_model() -> None:
    s = stats()
    s.record(row(input_tokens=10, output_tokens=5, cache_read_input_tokens=100, cost_nanousd=1500))
    s.record(row(input_tokens=1, output_tokens=2, cache_creation_input_tokens=7, cost_nanousd=None))
    s.record(row(model="claude-opus-4-6", input_tokens=3, output_tokens=4, cost_nanousd=9))
    sonnet, opus = s.models()["claude-sonnet-4-6"], s.models()["claude-opus-4-6"]
    assert (sonnet.input_tokens, sonnet.output_tokens, sonnet.cache_read_input_tokens,
            sonnet.cache_creation_input_tokens, sonnet.cost_nanousd) == (11, 7, 100, 7, 1500)
    assert (opus.input_tokens, opus.output_tokens, opus.cost_nanousd) == (3, 4, 9)


def test_each_try_followed_by_another_is_a_failover_from_its_upstream() -> None:
    s = stats()
    s.record(row(), ["a", "b", "c"])
    s.record(row(), ["a", "a"])
    s.record(row(), ["c"])
    assert s.failovers == {"a": 2, "b": 1}


@given(st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), max_size=200))
def test_a_histogram_is_cumulative_and_counts_every_value(values: list[float]) -> None:
    h = Histogram(LATENCY_BUCKETS)
    for v in values:
        h.observe(v)
    pairs = h.cumulative()
    counts = [n for _, n in pairs]
    assert counts == sorted(counts) and counts[-1] == len(values) == h.count
    for le, n in pairs[:-1]:
        assert n == sum(1 for v in values if v <= float(le))
