"""The failover soak as a benchmark: three upstreams, one of them failing 20% of the time, against all healthy.

    .venv/bin/python bench/soak.py [--requests N] [--quick]

Two scenarios, each with its own three fake upstreams and its own Tollway (fresh database, fresh health
state): `healthy`, and `u2-fails-20%` where u2 answers HTTP 500 api_error to a seeded 20% of its requests.
Each sends N requests (default 10,000; --quick 1,000) at concurrency 32, every other one streamed, to a
model whose three targets u1, u2, u3 have equal weight. Reports success rate, errors by kind, req/s,
latency, Tollway's CPU per request, what /healthz said, and from the usage table after a clean SIGTERM:
rows, rows with tries (failovers), and who served what. Prints a markdown table and writes
bench/results/soak.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson
import uvloop
from loadgen import ANTHROPIC, MODEL, client_headers, new_session
from procs import (
    CLK_TCK,
    Server,
    cpu_sample,
    create_tollway_key,
    free_port,
    log_tail,
    tollway_candidates,
    wait_http_ok,
    wait_tcp,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "soak.json"
UPSTREAMS = ("u1", "u2", "u3")
FAILING = "u2"
FAIL_RATE = 0.2
FAKE_SEED = 1
CONCURRENCY = 32
SCENARIOS: tuple[tuple[str, float], ...] = (("healthy", 0.0), ("u2-fails-20%", FAIL_RATE))
MODES = ("non-stream", "stream")
MAX_ERROR_SAMPLES = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, help="requests per scenario (default 10000, quick 1000)")
    parser.add_argument("--quick", action="store_true", help="1,000 requests per scenario: a smoke test")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help=f"default {CONCURRENCY}")
    parser.add_argument(
        "--scenario-timeout", type=float, default=300.0, help="seconds before a scenario stops issuing (default 300)"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs, databases, logs")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 1000 if args.quick else 10_000
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # A SIGTERM to the harness must still run the finally that stops the servers.
    raise KeyboardInterrupt


def write_config(path: Path, db: Path, port: int, upstream_ports: dict[str, int]) -> None:
    """Three anthropic upstreams with a key each, and one model spread evenly over them."""
    upstreams = "".join(
        f"""
[[upstreams]]
name = "{name}"
kind = "anthropic"
base_url = "http://127.0.0.1:{up_port}"
api_keys = ["secret-{name}"]
"""
        for name, up_port in upstream_ports.items()
    )
    targets = ", ".join(f'{{ upstream = "{name}" }}' for name in upstream_ports)
    path.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}

[storage]
url = "sqlite:///{db}"
{upstreams}
[[models]]
name = "{MODEL}"
targets = [{targets}]
"""
    )


# -- load --------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    issued: int = 0
    ok: int = 0
    elapsed: float = 0.0
    latencies_ns: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in MODES})
    sent: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def error(self, kind: str, sample: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(sample)


def check(status: int, data: bytes, stream: bool) -> str | None:
    """None for a complete answer, else the kind of error."""
    if status != 200:
        try:
            kind = orjson.loads(data)["error"]["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            kind = "unparsed body"
        return f"HTTP {status} {kind}"
    if stream:
        if b"event: error" in data:
            return "stream error event"
        if data.count(b"event: message_start") != 1:
            return "stream without exactly one message_start"
        if b"event: message_stop" not in data[-200:]:
            return "stream not ending in message_stop"
        return None
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "200 with unparsed body"
    if not isinstance(message, dict) or message.get("type") != "message" or not message.get("content"):
        return "200 without a message"
    return None


async def fire(url: str, headers: dict[str, str], total: int, concurrency: int, time_limit: float) -> Tally:
    """`total` requests, at most `concurrency` in flight, request i streamed when i is odd; none issued late."""
    tally = Tally()
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker(session: aiohttp.ClientSession) -> None:
        while tally.issued < total and time.perf_counter() < deadline:
            i = tally.issued
            tally.issued += 1
            mode = MODES[i % 2]
            tally.sent[mode] += 1
            t0 = time.perf_counter_ns()
            try:
                async with session.post(url, data=ANTHROPIC.bodies[mode], headers=headers) as resp:
                    data = await resp.read()
                    status = resp.status
                    request_id = resp.headers.get("request-id")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.error(type(exc).__name__, f"{mode}: {type(exc).__name__}: {exc}")
                continue
            if request_id is not None:
                tally.request_ids.append(request_id)
            kind = check(status, data, mode == "stream")
            if kind is None:
                tally.ok += 1
                tally.latencies_ns[mode].append(time.perf_counter_ns() - t0)
            else:
                tally.error(kind, f"{mode}: {kind}: {data[:200]!r}")

    async with new_session(concurrency * 2) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    tally.elapsed = time.perf_counter() - started
    return tally


def percentile_ms(latencies_ns: list[int], q: float) -> float | None:
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)
    # Nearest rank: an observed latency, never an interpolation between two.
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return round(ordered[rank - 1] / 1e6, 3)


def latency(latencies_ns: list[int]) -> dict[str, float | None]:
    return {
        "p50_ms": percentile_ms(latencies_ns, 0.50),
        "p99_ms": percentile_ms(latencies_ns, 0.99),
        "max_ms": round(max(latencies_ns) / 1e6, 3) if latencies_ns else None,
    }


# -- the usage table ---------------------------------------------------------------------------------------


def read_usage(db: Path, request_ids: list[str]) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT request_id, upstream, status, tries FROM usage").fetchall()
    finally:
        con.close()
    served: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    failed_attempts: Counter[str] = Counter()
    tries_per_row: Counter[int] = Counter()
    with_tries = 0
    for _, upstream, status, tries in rows:
        statuses[str(status)] += 1
        if status == 200:
            served[str(upstream)] += 1
        if tries is None:
            # One try: the row itself.
            attempts[str(upstream)] += 1
            tries_per_row[1] += 1
            continue
        with_tries += 1
        listed = json.loads(tries)
        tries_per_row[len(listed)] += 1
        for t in listed:
            attempts[str(t["upstream"])] += 1
            if t["status"] != 200:
                failed_attempts[str(t["upstream"])] += 1
    in_db = Counter(str(r[0]) for r in rows)
    seen = Counter(request_ids)
    n = len(rows)
    return {
        "rows": n,
        "rows_with_tries": with_tries,
        "statuses": dict(sorted(statuses.items())),
        "served": {u: served[u] for u in UPSTREAMS},
        "served_share": {u: round(served[u] / n, 4) if n else None for u in UPSTREAMS},
        "attempts": {u: attempts[u] for u in UPSTREAMS},
        "failed_attempts": {u: failed_attempts[u] for u in UPSTREAMS},
        "tries_per_row": {str(k): v for k, v in sorted(tries_per_row.items())},
        "request_ids_match": in_db == seen and all(c == 1 for c in in_db.values()),
        "request_ids_missing_from_db": sum((seen - in_db).values()),
        "request_ids_not_seen_by_client": sum((in_db - seen).values()),
    }


# -- one scenario ------------------------------------------------------------------------------------------


def healthz(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: dict[str, Any] = orjson.loads(resp.read())
            return body
    except (OSError, orjson.JSONDecodeError):
        return None


def health_summary(body: dict[str, Any] | None) -> dict[str, Any] | None:
    if body is None:
        return None
    keep = ("state", "failures", "successes", "errors", "in_flight", "last_error")
    return {
        "usage_pending": body.get("usage_pending"),
        "upstreams": {u["upstream"]: {k: u.get(k) for k in keep} for u in body.get("upstreams", [])},
    }


def fake_counts(log: Path) -> dict[str, int] | None:
    """What a fake says it answered and failed, from the line it prints on shutdown."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("messages answered "):
            words = line.replace(",", "").split()
            return {"answered": int(words[2]), "failed": int(words[4])}
    return None


def run_scenario(
    name: str, fail_rate: float, args: argparse.Namespace, tmp: Path, servers: list[Server]
) -> dict[str, Any]:
    py = sys.executable
    here = tmp / name
    here.mkdir()
    fakes: dict[str, Server] = {}
    ports: dict[str, int] = {}
    for upstream in UPSTREAMS:
        port = free_port()
        argv = [py, str(BENCH / "fake_upstream.py"), "--port", str(port)]
        if upstream == FAILING and fail_rate > 0:
            argv += ["--fail-rate", str(fail_rate), "--seed", str(FAKE_SEED)]
        fake = Server(f"fake-{upstream}", argv, here / f"fake-{upstream}.log")
        servers.append(fake)
        fake.start()
        fakes[upstream], ports[upstream] = fake, port
    for upstream, fake in fakes.items():
        wait_tcp(fake, ports[upstream])

    port = free_port()
    config, db = here / "tollway.toml", here / "tollway.db"
    write_config(config, db, port, ports)
    setup, why = create_tollway_key(tollway_candidates(REPO, py), config)
    if setup is None:
        raise RuntimeError(f"`keys create` failed with every launcher:\n{why}")
    # Tollway runs from the working tree: note what in it was uncommitted when this one started.
    dirty = git_dirty()
    gateway = Server("tollway", [*setup.command, "serve", "--config", str(config)], here / "tollway.log", setup.env)
    servers.append(gateway)
    gateway.start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(gateway, f"{base}/healthz")

    cpu0, ups0, gen0 = cpu_sample(gateway.pid), [cpu_sample(f.pid) for f in fakes.values()], os.times()
    tally = uvloop.run(
        fire(
            f"{base}/v1/messages", client_headers(setup.api_key), args.requests, args.concurrency, args.scenario_timeout
        )
    )
    cpu1, ups1, gen1 = cpu_sample(gateway.pid), [cpu_sample(f.pid) for f in fakes.values()], os.times()
    health = health_summary(healthz(f"{base}/healthz"))

    # A clean SIGTERM flushes the usage batch still in memory; a SIGKILL would lose it.
    gateway.stop(grace=60.0)
    assert gateway.proc is not None
    exit_code = gateway.proc.returncode
    for fake in fakes.values():
        fake.stop()
    fake_said = {u: fake_counts(f.log) for u, f in fakes.items()}
    usage = read_usage(db, tally.request_ids)

    n = tally.issued

    def per_req(seconds: float) -> float | None:
        return round(seconds * 1e6 / n, 1) if n else None

    ticks, ns = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    ups_ns = sum(b[1] - a[1] for a, b in zip(ups0, ups1, strict=True))
    gen = (gen1.user + gen1.system) - (gen0.user + gen0.system)
    every = [x for mode in MODES for x in tally.latencies_ns[mode]]
    result: dict[str, Any] = {
        "scenario": name,
        "failing_upstream": FAILING if fail_rate > 0 else None,
        "fail_rate": fail_rate,
        "requested": args.requests,
        "requests": n,
        "ok": tally.ok,
        "success_rate": round(tally.ok / n, 6) if n else None,
        "errors": dict(tally.errors.most_common()),
        "error_samples": tally.error_samples,
        "seconds": round(tally.elapsed, 3),
        "rps": round(tally.ok / tally.elapsed, 1) if tally.elapsed > 0 else None,
        **latency(every),
        "by_mode": {
            mode: {"sent": tally.sent[mode], "ok": len(tally.latencies_ns[mode]), **latency(tally.latencies_ns[mode])}
            for mode in MODES
        },
        "cpu_ticks": ticks,
        "cpu_us_per_req": per_req(ticks / CLK_TCK),
        "cpu_sched_us_per_req": per_req(ns / 1e9),
        "upstreams_cpu_sched_us_per_req": per_req(ups_ns / 1e9),
        "loadgen_cpu_us_per_req": per_req(gen),
        "tollway_exit_code": exit_code,
        "uncommitted_at_start": dirty,
        "usage": usage,
        "health_after": health,
        "fake_upstreams": fake_said,
    }
    if exit_code != 0:
        result["tollway_log_tail"] = log_tail(gateway.log)
    return result


# -- report ------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(results: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | requests | success | errors | req/s | p50 ms | p99 ms | max ms | CPU µs/req | sched µs/req "
        "| usage rows | rows with tries | u2 served | u1 / u2 / u3 served |\n"
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in results:
        u = r["usage"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        share = u["served_share"][FAILING]
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['success_rate'] * 100:.2f}% | {errors} | {_fmt(r['rps'])} "
            f"| {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['max_ms'])} | {_fmt(r['cpu_us_per_req'])} "
            f"| {_fmt(r['cpu_sched_us_per_req'])} | {u['rows']} | {u['rows_with_tries']} "
            f"| {'-' if share is None else f'{share * 100:.1f}%'} "
            f"| {' / '.join(str(u['served'][x]) for x in UPSTREAMS)} |"
        )
    modes = "\n\n| scenario | mode | sent | ok | p50 ms | p99 ms | max ms |\n|---|---|---:|---:|---:|---:|---:|\n"
    mode_lines = [
        f"| {r['scenario']} | {mode} | {m['sent']} | {m['ok']} | {_fmt(m['p50_ms'])} | {_fmt(m['p99_ms'])} "
        f"| {_fmt(m['max_ms'])} |"
        for r in results
        for mode, m in r["by_mode"].items()
    ]
    tries = "\n\n| scenario | attempts u1 / u2 / u3 | failed attempts u1 / u2 / u3 | tries per row | ids match |\n"
    tries += "|---|---|---|---|---|\n"
    tries_lines = [
        f"| {r['scenario']} | {' / '.join(str(r['usage']['attempts'][x]) for x in UPSTREAMS)} "
        f"| {' / '.join(str(r['usage']['failed_attempts'][x]) for x in UPSTREAMS)} "
        f"| {', '.join(f'{k}: {v}' for k, v in r['usage']['tries_per_row'].items())} "
        f"| {r['usage']['request_ids_match']} |"
        for r in results
    ]
    return head + "\n".join(lines) + modes + "\n".join(mode_lines) + tries + "\n".join(tries_lines)


def passed(r: dict[str, Any]) -> bool:
    u = r["usage"]
    return bool(
        r["requests"] == r["requested"]
        and r["ok"] == r["requests"]
        and u["rows"] == r["requests"]
        and u["request_ids_match"]
        and r["tollway_exit_code"] == 0
    )


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def git_dirty() -> list[str] | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line[3:] for line in done.stdout.splitlines()]


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="tollway-soak-"))
    servers: list[Server] = []
    keep_tmp = args.keep_tmp
    try:
        print(f"cores={os.cpu_count()} requests={args.requests} c={args.concurrency} tmp={tmp}", flush=True)
        started = time.monotonic()
        results = []
        for name, fail_rate in SCENARIOS:
            result = run_scenario(name, fail_rate, args, tmp, servers)
            results.append(result)
            print(
                f"  {name:14} ok {result['ok']}/{result['requests']}  {result['rps']} req/s  p50 {result['p50_ms']} "
                f"p99 {result['p99_ms']} max {result['max_ms']} ms  errors {result['errors'] or 0}  "
                f"cpu {result['cpu_us_per_req']} us/req  rows {result['usage']['rows']}",
                flush=True,
            )
        print("\n" + markdown(results) + "\n")
        meta = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "clk_tck": CLK_TCK,
            "wall_seconds": round(time.monotonic() - started, 1),
            "args": dict(vars(args)),
            "mix": "one run per scenario, request i streamed when i is odd (half and half, interleaved)",
            "upstreams": list(UPSTREAMS),
            "fake_seed": FAKE_SEED,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_bytes(orjson.dumps({"meta": meta, "scenarios": results}, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
        ok = all(passed(r) for r in results)
        keep_tmp = keep_tmp or not ok
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        keep_tmp = True
        return 2
    finally:
        for server in reversed(servers):
            server.stop()
        if keep_tmp:
            print(f"logs, configs and databases kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
