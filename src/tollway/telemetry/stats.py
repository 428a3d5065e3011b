"""Request counts, latencies, tokens and cost, added up in memory as each request ends, for ``/metrics``.

A request costs a few dictionary updates here (plain ints and floats keyed by tuples, no locks, no client
library objects): the Prometheus client library's own counters take a lock per increment and would more
than double this. The collector in ``tollway.api.metrics`` turns these totals into metric families at scrape
time only.

Label values are bounded, so that a client cannot grow the series without end: a model the gateway does not
route is counted as ``other``, and an error type outside the API's own list as ``other`` too.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tollway.store import UsageRecord

# Seconds. The low end resolves what a gateway adds (a few ms); the high end what a long stream takes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error", "client_closed",
})
OTHER = "other"
NONE = ""
"""The label value of a missing model, upstream or error type (a request refused before it named one)."""


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative: Prometheus's cumulative form is made at scrape time), sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus's `le`).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, ``+Inf`` last, as the exposition format wants them."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass(slots=True)
class ModelTotals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_nanousd: int = 0


class RequestStats:
    """Everything ``/metrics`` reports about requests, since this process started."""

    def __init__(self, known_model: Callable[[str], bool]) -> None:
        self._known_model = known_model
        self.requests: dict[tuple[str, str, str, str, str], int] = {}
        """(endpoint, model, upstream, status, error type) -> requests."""
        self.latency: dict[tuple[str, str], Histogram] = {}
        """(upstream, "true"/"false" for streamed) -> seconds from arrival to the last byte."""
        self.ttfb: dict[tuple[str, str], Histogram] = {}
        """(upstream, streamed) -> seconds from arrival to the upstream's first byte."""
        self.models: dict[str, ModelTotals] = {}
        self.failovers: dict[str, int] = {}
        """Upstream -> tries there that failed and were followed by a try elsewhere (or on another key)."""

    def model_label(self, model: str | None) -> str:
        if model is None:
            return NONE
        return model if self._known_model(model) else OTHER

    def record(self, row: UsageRecord, try_upstreams: Sequence[str] = ()) -> None:
        """Count one ended request. ``try_upstreams``: the upstream of each try, in order."""
        model = self.model_label(row.model)
        upstream = row.upstream or NONE
        error = row.error_type
        error_label = NONE if error is None else error if error in ERROR_TYPES else OTHER
        key = (row.endpoint, model, upstream, str(row.status), error_label)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        stream = "true" if row.stream else "false"
        where = (upstream, stream)
        latency = self.latency.get(where)
        if latency is None:
            latency = self.latency[where] = Histogram(LATENCY_BUCKETS)
        latency.observe(row.latency_ms / 1000)
        if row.ttfb_ms is not None:
            ttfb = self.ttfb.get(where)
            if ttfb is None:
                ttfb = self.ttfb[where] = Histogram(TTFB_BUCKETS)
            ttfb.observe(row.ttfb_ms / 1000)
        if row.input_tokens or row.output_tokens or row.cost_nanousd:
            totals = self.models.get(model)
            if totals is None:
                totals = self.models[model] = ModelTotals()
            totals.input_tokens += row.input_tokens
            totals.output_tokens += row.output_tokens
            totals.cache_creation_input_tokens += row.cache_creation_input_tokens
            totals.cache_read_input_tokens += row.cache_read_input_tokens
            totals.cost_nanousd += row.cost_nanousd or 0
        for failed in try_upstreams[:-1]:
            self.failovers[failed] = self.failovers.get(failed, 0) + 1
