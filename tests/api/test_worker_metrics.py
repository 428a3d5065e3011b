"""The figures ``serve --workers`` processes leave for each other, and how a scrape merges them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tollway.api.worker_metrics import WorkerSlot, dumps, loads, merged, peers, publisher


def families(requests: float) -> list[Metric]:
    counter = CounterMetricFamily("tollway_requests", "Requests.", labels=["model"])
    counter.add_metric(["m"], requests)
    histogram = HistogramMetricFamily("tollway_latency_seconds", "Latency.", labels=["upstream"])
    histogram.add_metric(["u"], [("0.1", 1.0), ("+Inf", requests)], sum_value=requests * 0.2)
    return [counter, histogram]


def exposition(metrics: list[Metric]) -> dict[str, float]:
    class Fixed(Collector):
        def collect(self) -> list[Metric]:
            return metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"] = s.value
    return out


def test_a_worker_s_families_survive_the_file_and_merge_with_a_worker_label() -> None:
    mine, theirs = families(3), loads(dumps(families(5)))
    assert [f.samples for f in theirs] == [f.samples for f in families(5)]
    shown = exposition(merged({1: theirs, 0: mine}))
    assert shown["tollway_requests_total{model=m,worker=0}"] == 3
    assert shown["tollway_requests_total{model=m,worker=1}"] == 5
    assert shown["tollway_latency_seconds_bucket{le=+Inf,upstream=u,worker=1}"] == 5
    assert shown["tollway_latency_seconds_sum{upstream=u,worker=0}"] == 3 * 0.2


def test_peers_are_the_other_workers_files_and_a_broken_one_is_skipped(tmp_path: Path) -> None:
    for index, count in ((0, 1), (1, 2), (2, 3)):
        WorkerSlot(index, tmp_path).path.write_bytes(dumps(families(count)))
    (tmp_path / "3.metrics.json").write_bytes(b'[{"name": "half')  # a crash mid-write, before any rename
    found = peers(WorkerSlot(1, tmp_path))
    assert sorted(found) == [0, 2]
    assert found[2][0].samples[0].value == 3


async def test_the_publisher_writes_now_and_then_and_once_more_at_the_end(tmp_path: Path) -> None:
    slot = WorkerSlot(4, tmp_path)
    count = [1.0]
    context = publisher(slot, lambda: families(count[0]), period=0.05)(None)
    await anext(context)
    for _ in range(200):
        await asyncio.sleep(0.02)
        if slot.path.exists():
            break
    assert loads(slot.path.read_bytes())[0].samples[0].value == 1
    count[0] = 7.0
    await anext(context, None)  # the server stops
    assert loads(slot.path.read_bytes())[0].samples[0].value == 7
    assert names(tmp_path) == ["4.metrics.json"]  # no temporary file left behind


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())
