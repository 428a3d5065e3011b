"""``GET /metrics``: the gateway's state in Prometheus's text format, for an operator's dashboards and alerts.

Everything here is read at scrape time, through a collector of the official client library, from what the
gateway keeps anyway (the ledger's queue, the shared stores' state, the upstreams' health board) and from the
request totals of `tollway.telemetry.RequestStats`, which a request adds to in plain dictionaries as it ends.
Scraping costs the requests nothing, and the client library's own per-increment locks stay off their path.
Every figure is this process's own since it started; with ``--workers`` the answer holds every worker's, each
labelled with its ``worker`` (see `tollway.api.worker_metrics`). With replicas, scrape each and sum.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web

from tollway.api.context import SERVICES, Services
from tollway.api.worker_metrics import WorkerSlot, merged, peers
from tollway.telemetry import RequestStats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def collect(s: Services) -> Iterator[Metric]:
    """Every metric, read from the services now."""
    # Imported at the first scrape: the client library takes a quarter of a second to import, which a start
    # (and a gateway nobody scrapes) does without.
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("tollway_open_streams", "Streams being relayed now.", value=s.open_streams)
    store = s.ledger.health()
    yield GaugeMetricFamily("tollway_store_writing", "1 while usage batches reach the database, 0 while they fail.",
                            value=1 if store["writing"] else 0)
    yield GaugeMetricFamily("tollway_usage_pending_rows", "Usage rows waiting for the next batch write.",
                            value=float(str(store["pending_rows"])))
    yield GaugeMetricFamily("tollway_ledger_pending_entries", "Ledger entries waiting for the next batch write.",
                            value=float(str(store["pending_entries"])))
    yield CounterMetricFamily("tollway_usage_dropped_rows", "Usage rows dropped because the queue was full.",
                              value=s.ledger.dropped)
    yield GaugeMetricFamily("tollway_usage_held_requests",
                            "Requests whose usage the database refused alone, held apart and tried at each flush.",
                            value=float(str(store["held_requests"])))
    shared = getattr(s.limiter, "is_shared", None)
    if shared is not None:
        yield GaugeMetricFamily("tollway_limits_shared",
                                "1 while rate limits are shared through Redis, 0 while this process keeps its own.",
                                value=1 if shared else 0)
        yield CounterMetricFamily("tollway_limits_redis_outages", "Times the rate limiter lost Redis.",
                                  value=getattr(s.limiter, "outages", 0))
    wallet = s.funds.shared
    if wallet is not None:
        yield CounterMetricFamily("tollway_balances_redis_failures",
                                  "Balance checks that could not reach Redis (answered 529).", value=wallet.outages)
        yield GaugeMetricFamily("tollway_balances_unsettled", "Settles waiting for Redis to answer again.",
                                value=wallet.unsettled)
    if s.bus is not None:
        yield GaugeMetricFamily("tollway_replica_messages_listening",
                                "1 while messages from other replicas (rests, changes) arrive.",
                                value=1 if s.bus.listening else 0)
    yield from _requests(s.stats)
    if s.access_log is not None:
        yield CounterMetricFamily("tollway_request_log_dropped_lines",
                                  "Request log lines not written (the sink failed or fell 64 MB behind).",
                                  value=s.access_log.dropped)
    resting = GaugeMetricFamily("tollway_upstream_resting_seconds", "Seconds left of an upstream's rest.",
                                labels=["upstream"])
    in_flight = GaugeMetricFamily("tollway_upstream_in_flight", "Requests to an upstream now.", labels=["upstream"])
    tries = CounterMetricFamily("tollway_upstream_tries", "Tries sent to an upstream, by outcome.",
                                labels=["upstream", "outcome"])
    keys_resting = GaugeMetricFamily("tollway_upstream_keys_resting", "An upstream's keys resting now.",
                                     labels=["upstream"])
    rests = CounterMetricFamily("tollway_upstream_rests", "Rests (cooldowns) this process gave an upstream or its "
                                "keys after failures.", labels=["upstream", "scope"])
    for up in s.health.snapshot(s.table.key_counts()):
        name = str(up["upstream"])
        resting.add_metric([name], float(up["resting_s"]))
        in_flight.add_metric([name], float(up["in_flight"]))
        tries.add_metric([name, "success"], float(up["successes"]))
        tries.add_metric([name, "error"], float(up["errors"]))
        keys_resting.add_metric([name], float(sum(1 for k in up["keys"] if k["resting_s"] > 0)))
        rests.add_metric([name, "upstream"], float(up["rests"]))
        rests.add_metric([name, "key"], float(sum(k["rests"] for k in up["keys"])))
    yield from (resting, in_flight, tries, keys_resting, rests)


def _requests(stats: RequestStats) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    requests = CounterMetricFamily("tollway_requests", "Requests ended, by endpoint, model asked for, upstream, "
                                   "HTTP status and error type (empty: none).",
                                   labels=["endpoint", "model", "upstream", "status", "error_type"])
    for labels, count in stats.requests().items():
        requests.add_metric(list(labels), float(count))
    yield requests
    for name, doc, histograms in (
            ("tollway_request_duration_seconds", "From the request's arrival to its last byte sent.", stats.latency()),
            ("tollway_time_to_first_byte_seconds", "From the request's arrival to the upstream's first byte.",
             stats.ttfb())):
        family = HistogramMetricFamily(name, doc, labels=["upstream", "stream"])
        for (upstream, stream), h in list(histograms.items()):
            family.add_metric([upstream, stream], h.cumulative(), sum_value=h.total)
        yield family
    tokens = CounterMetricFamily("tollway_tokens", "Tokens, by model asked for and kind.", labels=["model", "kind"])
    cost = CounterMetricFamily("tollway_cost_usd", "What requests cost at the configured prices, by model asked for.",
                               labels=["model"])
    for model, t in stats.models().items():
        kinds = (("input", t.input_tokens), ("output", t.output_tokens),
                 ("cache_read", t.cache_read_input_tokens), ("cache_creation", t.cache_creation_input_tokens))
        for kind, value in kinds:
            tokens.add_metric([model, kind], float(value))
        cost.add_metric([model], t.cost_nanousd / 1e9)
    yield from (tokens, cost)
    failovers = CounterMetricFamily("tollway_upstream_failovers", "Tries that failed and were followed by another "
                                    "try (another key or upstream), by the upstream that failed.", labels=["upstream"])
    for upstream, count in list(stats.failovers.items()):
        failovers.add_metric([upstream], float(count))
    yield failovers


def metrics_handler(worker: WorkerSlot | None = None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler, with its registry made at the first scrape (the services exist only once started)."""
    registries: list[CollectorRegistry] = []

    def families(services: Services) -> Iterator[Metric]:
        if worker is None:
            return collect(services)
        return iter(merged({worker.index: list(collect(services)), **peers(worker)}))

    async def metrics(request: web.Request) -> web.Response:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.registry import Collector

        if not registries:
            services = request.app[SERVICES]

            class State(Collector):
                def collect(self) -> Iterator[Metric]:
                    return families(services)

            registry = CollectorRegistry(auto_describe=False)
            registry.register(State())
            registries.append(registry)
        return web.Response(body=generate_latest(registries[0]), headers={"content-type": CONTENT_TYPE})

    return metrics
