"""Request rate with 1, 2 and 3 Tollway replicas on one PostgreSQL database and one Redis, one fake upstream.

    .venv/bin/python bench/replicas.py [--quick] [--requests N] [--rounds N] [--replicas 1,2,3]

Starts the fake upstream, creates a fresh PostgreSQL database (dropped at exit) and runs `tollway migrate`
on it, makes a plain key and a limited key (run.py's LIMITED_KEY: limits far above the load), then starts 1,
then 2, then 3 replicas of `tollway serve` (each its own port, one config: the database, Redis limits under
one prefix of their own). The load generator spreads requests round-robin over the replicas itself: there is
no load balancer process in between. For each replica count it measures req/s, p50/p99 and the CPU per
request of all replicas together, for both keys, stream and non-stream, at each concurrency. After each
count the replicas get SIGTERM (which flushes their usage rows) and the usage table is counted: one row per
request sent, and the limited key's rows all 200. A small key (--probe-rpm) is also sent three times its
rpm, spread the same way, to show the limit holds across replicas. Prints markdown and writes
bench/results/replicas.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from loadgen import ANTHROPIC, LoadResult, Workload, client_headers, new_session
from procs import (
    BENCH_POSTGRES,
    BENCH_REDIS,
    CLK_TCK,
    LIMITED_KEY,
    Server,
    bench_database,
    cpu_sample,
    create_tollway_key,
    free_port,
    git_commit,
    log_tail,
    raise_interrupt,
    tollway_candidates,
    wait_http_ok,
    wait_tcp,
    write_tollway_config,
)
from report import markdown

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "replicas.json"
MODES = ("non-stream", "stream")
KEYS = ("plain", "limited")
KEY_NAMES = {"plain": "bench", "limited": "bench-limited"}
"""Key kind -> the key's name in the database, which is how the usage rows are counted per key."""
SPREAD_NOTE = (
    "Requests are spread round-robin over the replicas by the load generator itself (request i goes to "
    "replica i mod N): no load balancer process sits in between, so none can be the bottleneck."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, help="measured requests per c>1 cell (default 2000, quick 300)")
    parser.add_argument("--requests-c1", type=int, help="measured requests per c=1 cell (default requests/4)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a measurement")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated levels (default 1,32)")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts, in order (default 1,2,3)")
    parser.add_argument("--rounds", type=int,
                        help="run the replica counts this many times over; each cell keeps its median round by CPU "
                             "(default 3, quick 1)")
    parser.add_argument("--probe-rpm", type=int, default=20,
                        help="rpm of the key sent 3x its limit to show the limit is global (default 20)")
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds before a cell stops issuing")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with the config and every log")
    args = parser.parse_args()
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    args.replicas = [int(n) for n in args.replicas.split(",") if n.strip()]
    if not args.concurrency or min(args.concurrency) < 1 or not args.replicas or min(args.replicas) < 1:
        parser.error("need at least one concurrency and one replica count, all >= 1")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1 or args.probe_rpm < 1:
        parser.error("--rounds and --probe-rpm must be at least 1")
    if args.requests is None:
        args.requests = 300 if args.quick else 2000
    if args.requests_c1 is None:
        args.requests_c1 = max(1, args.requests // 4)
    return args


# -- load --------------------------------------------------------------------------------------------------


@dataclass
class Spread:
    """A load result plus what run_load does not keep: every status seen, and how many went to each replica."""

    result: LoadResult = field(default_factory=LoadResult)
    statuses: Counter[str] = field(default_factory=Counter)
    per_replica: Counter[int] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        return self.result.ok + self.result.errors


async def run_spread(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    headers: dict[str, str],
    workload: Workload,
    stream: bool,
    concurrency: int,
    total: int,
    time_limit: float,
) -> Spread:
    """loadgen.run_load over several URLs: each request goes to the next one in turn."""
    body = workload.bodies["stream" if stream else "non-stream"]
    end = workload.stream_end
    out = Spread()
    result = out.result
    turn = itertools.cycle(range(len(urls)))
    issued = 0
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            replica = next(turn)
            out.per_replica[replica] += 1
            t0 = time.perf_counter_ns()
            try:
                async with session.post(urls[replica], data=body, headers=headers) as resp:
                    data = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.statuses[type(exc).__name__] += 1
                result.note_error(f"replica {replica + 1}: {type(exc).__name__}: {exc}")
                continue
            out.statuses[str(status)] += 1
            if status != 200:
                result.note_error(f"replica {replica + 1}: HTTP {status}: {data[:200]!r}")
            elif stream and end not in data[-200:]:
                result.note_error(f"replica {replica + 1}: stream not ending in {end.decode()}: {data[-200:]!r}")
            else:
                result.ok += 1
                result.latencies_ns.append(time.perf_counter_ns() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return out


# -- CPU ---------------------------------------------------------------------------------------------------


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def service_roots() -> list[int]:
    """The PostgreSQL postmaster and redis-server: their CPU is part of what a shared-store request costs."""
    roots = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            pid = int(entry.name)
            comm = _comm(pid)
            if comm == "redis-server" or (comm == "postgres" and _comm(_ppid(pid)) != "postgres"):
                roots.append(pid)
    return roots


def cpu_total(pids: Sequence[int]) -> tuple[int, int]:
    ticks = ns = 0
    for pid in pids:
        t, n = cpu_sample(pid)
        ticks, ns = ticks + t, ns + n
    return ticks, ns


def machine_busy() -> float:
    """Seconds of CPU the whole machine has been busy (all cores, /proc/stat), to see what else ran."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user and nice).
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- one replica count -------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every phase shares."""

    args: argparse.Namespace
    tmp: Path
    config: Path
    command: list[str]
    env: dict[str, str]
    headers: dict[str, dict[str, str]]
    """Key kind -> client headers."""
    probe_keys: dict[int, str]
    """Replica count -> a key with --probe-rpm, fresh for that count."""
    fake: Server
    servers: list[Server]
    sent: Counter[str] = field(default_factory=Counter)
    """Requests sent so far per key name, warm-ups and probes included: what the usage table must hold."""


def start_replicas(bench: Bench, n: int, label: str) -> tuple[list[Server], list[str]]:
    replicas, ports = [], []
    for i in range(1, n + 1):
        port = free_port()
        argv = [*bench.command, "serve", "--config", str(bench.config), "--port", str(port)]
        server = Server(f"replica-{i}", argv, bench.tmp / f"{label}-replica-{i}.log", bench.env)
        bench.servers.append(server)
        server.start()
        replicas.append(server)
        ports.append(port)
    for server, port in zip(replicas, ports, strict=True):
        wait_http_ok(server, f"http://127.0.0.1:{port}/healthz")
    return replicas, [f"http://127.0.0.1:{port}" for port in ports]


def healthz(base: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
            body: dict[str, Any] = orjson.loads(resp.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return {"limits": body.get("limits"), "usage_pending": body.get("usage_pending")}


def summarise(n: int, key: str, mode: str, c: int, run: Spread, cpu: list[tuple[int, int]],
              upstream_ns: int, services_ns: int, gen: float) -> dict[str, Any]:
    res = run.result
    done = run.sent

    def per_req(seconds: float) -> float | None:
        return round(seconds * 1e6 / done, 1) if done else None

    ticks, ns = sum(t for t, _ in cpu), sum(s for _, s in cpu)
    p50, p99 = res.percentile_ms(0.50), res.percentile_ms(0.99)
    return {
        "replicas": n,
        "key": key,
        "mode": mode,
        "concurrency": c,
        "requests": res.ok,
        "errors": res.errors,
        "statuses": dict(run.statuses),
        "per_replica": [run.per_replica[i] for i in range(n)],
        "seconds": round(res.elapsed, 3),
        "rps": round(res.rps, 1),
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "cpu_ticks": ticks,
        "cpu_us_per_req": per_req(ticks / CLK_TCK),
        "cpu_sched_us_per_req": per_req(ns / 1e9),
        "cpu_sched_us_per_req_by_replica": [per_req(s / 1e9) for _, s in cpu],
        "upstream_cpu_us_per_req": per_req(upstream_ns / 1e9),
        "services_cpu_us_per_req": per_req(services_ns / 1e9),
        "loadgen_cpu_us_per_req": per_req(gen),
        "error_samples": res.error_samples,
    }


async def drive(bench: Bench, n: int, replicas: list[Server], bases: list[str], probe: bool) -> dict[str, Any]:
    args = bench.args
    urls = [f"{base}/v1/messages" for base in bases]
    services = service_roots()
    cells: list[dict[str, Any]] = []
    async with new_session(max(args.concurrency) * 2) as session:
        for mode in MODES:
            stream = mode == "stream"
            for c in args.concurrency:
                total = args.requests_c1 if c == 1 else args.requests
                warmup = max(c, min(200, total // 10))
                for key in KEYS:
                    headers = bench.headers[key]
                    warm = await run_spread(session, urls, headers, ANTHROPIC, stream, c, warmup, args.cell_timeout)
                    cpu0 = [cpu_sample(r.pid) for r in replicas]
                    up0, svc0, gen0 = cpu_sample(bench.fake.pid)[1], cpu_total(services)[1], own_cpu()
                    busy0 = machine_busy()
                    run = await run_spread(session, urls, headers, ANTHROPIC, stream, c, total, args.cell_timeout)
                    busy1 = machine_busy()
                    cpu1 = [cpu_sample(r.pid) for r in replicas]
                    up1, svc1, gen1 = cpu_sample(bench.fake.pid)[1], cpu_total(services)[1], own_cpu()
                    bench.sent[KEY_NAMES[key]] += warm.sent + run.sent
                    cpu = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(cpu0, cpu1, strict=True)]
                    cell = summarise(n, key, mode, c, run, cpu, up1 - up0, svc1 - svc0, gen1 - gen0)
                    cell["warmup_statuses"] = dict(warm.statuses)
                    cell["machine_busy_cores"] = round((busy1 - busy0) / run.result.elapsed, 2)
                    cells.append(cell)
                    print(
                        f"  {n} replica{'s' if n > 1 else ' '} {key:8} {mode:10} c={c:<3} {cell['rps']:>9} req/s  "
                        f"p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms  errors {cell['errors']}  "
                        f"cpu {cell['cpu_us_per_req']} us/req (sched {cell['cpu_sched_us_per_req']}, "
                        f"by replica {cell['cpu_sched_us_per_req_by_replica']})",
                        flush=True,
                    )
        probed = None
        if probe:
            # A burst of three times the key's rpm, spread like the load: shared buckets admit rpm requests
            # in all, per-replica ones would admit rpm on each replica.
            rpm = args.probe_rpm
            run = await run_spread(session, urls, client_headers(bench.probe_keys[n]), ANTHROPIC, False, 4,
                                   3 * rpm, args.cell_timeout)
            bench.sent[f"probe-{n}"] += run.sent
            admitted = run.statuses.get("200", 0)
            # The bucket regains one request every 60/rpm s, which a slow probe may see.
            regained = int(run.result.elapsed * rpm / 60)
            probed = {
                "rpm": rpm,
                "sent": run.sent,
                "statuses": dict(run.statuses),
                "admitted": admitted,
                "per_replica_limits_would_admit": min(run.sent, n * rpm),
                "seconds": round(run.result.elapsed, 3),
                "global": rpm <= admitted <= rpm + regained and run.statuses.get("429", 0) == run.sent - admitted,
            }
            print(f"  {n} replica{'s' if n > 1 else ' '} probe: {admitted} of {run.sent} admitted at rpm {rpm} "
                  f"(per-replica limits would admit {probed['per_replica_limits_would_admit']})", flush=True)
    return {"cells": cells, "probe": probed, "health_after": [healthz(base) for base in bases]}


async def usage_counts(storage: str) -> dict[str, dict[str, int]]:
    """Rows in the usage table per key name and status."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(storage, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT coalesce(k.name, '(no key)') AS name, u.status, count(*) AS n"
            " FROM usage u LEFT JOIN keys k ON k.id = u.key_id GROUP BY 1, 2"
        )
    finally:
        await conn.close()
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(str(row["name"]), {})[str(row["status"])] = int(row["n"])
    return counts


def run_phase(bench: Bench, storage: str, n: int, round_no: int, probe: bool) -> dict[str, Any]:
    label = f"round{round_no}-n{n}"
    replicas, bases = start_replicas(bench, n, label)
    try:
        health_before = [healthz(base) for base in bases]
        done = uvloop.run(drive(bench, n, replicas, bases, probe))
    finally:
        # SIGTERM: each replica finishes what it has in flight and writes its queued rows before exiting.
        for server in replicas:
            server.stop(grace=60.0)
    exits = [server.proc.returncode if server.proc is not None else None for server in replicas]
    counts = uvloop.run(usage_counts(storage))
    rows = sum(sum(by_status.values()) for by_status in counts.values())
    sent = sum(bench.sent.values())
    limited = counts.get(KEY_NAMES["limited"], {})
    failed = sum(c["errors"] + sum(n for status, n in c["warmup_statuses"].items() if status != "200")
                 for c in done["cells"])
    check = {
        "failed_requests": failed,
        "requests_sent_so_far": sent,
        "usage_rows": rows,
        "rows_match": rows == sent
        and all(sum(counts.get(name, {}).values()) == count for name, count in bench.sent.items()),
        "sent_by_key": dict(bench.sent),
        "rows_by_key_and_status": counts,
        "limited_key_all_200": set(limited) == {"200"},
        "replica_exit_codes": exits,
    }
    print(f"  {n} replica{'s' if n > 1 else ' '} after SIGTERM: {rows} usage rows for {sent} requests sent "
          f"({'match' if check['rows_match'] else 'MISMATCH'}); limited key statuses {limited}; exit codes {exits}",
          flush=True)
    logs = {s.name: log_tail(s.log, 10) for s in replicas if s.proc is not None and s.proc.returncode != 0}
    return {"replicas": n, "round": round_no, **done, "health_before": health_before, "check": check,
            "failed_replica_logs": logs}


# -- report ------------------------------------------------------------------------------------------------


def median_cells(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per replica count, key, mode and concurrency: the median round by (sched) CPU per request."""
    grouped: dict[tuple[int, str, str, int], list[dict[str, Any]]] = {}
    for phase in phases:
        for cell in phase["cells"]:
            grouped.setdefault((cell["replicas"], cell["key"], cell["mode"], cell["concurrency"]), []).append(cell)
    kept = []
    for cells in grouped.values():
        # By schedstat's nanoseconds, not the 10 ms ticks, which tie on short cells.
        ordered = sorted(cells, key=lambda cell: float(cell["cpu_sched_us_per_req"] or 0.0))
        cell = dict(ordered[len(ordered) // 2])
        cell["rounds_cpu_sched_us_per_req"] = [c["cpu_sched_us_per_req"] for c in cells]
        # A failure in a round that was not kept must still show.
        cell["errors_all_rounds"] = sum(c["errors"] for c in cells)
        cell["error_samples_all_rounds"] = [e for c in cells for e in c["error_samples"]][:5]
        kept.append(cell)
    # Replica counts side by side for each key, mode and concurrency: the rows to compare are adjacent.
    return sorted(kept, key=lambda c: (KEYS.index(c["key"]), MODES.index(c["mode"]), c["concurrency"], c["replicas"]))


def spreading_cost(cells: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each replica count against one replica, for the same key, mode and concurrency."""
    one = {(c["key"], c["mode"], c["concurrency"]): c for c in cells if c["replicas"] == 1}
    out: dict[str, dict[str, float | None]] = {}
    for c in cells:
        base = one.get((c["key"], c["mode"], c["concurrency"]))
        if base is None or c["replicas"] == 1:
            continue

        def diff(name: str, cell: dict[str, Any] = c, ref: dict[str, Any] = base) -> float | None:
            a, b = cell.get(name), ref.get(name)
            return round(a - b, 1) if a is not None and b is not None else None

        def ratio(name: str, cell: dict[str, Any] = c, ref: dict[str, Any] = base) -> float | None:
            a, b = cell.get(name), ref.get(name)
            return round(a / b, 2) if a is not None and b else None

        out[f"{c['key']} {c['mode']} c={c['concurrency']}, {c['replicas']} replicas"] = {
            "cpu_us_per_req_extra": diff("cpu_us_per_req"),
            "cpu_sched_us_per_req_extra": diff("cpu_sched_us_per_req"),
            "cpu_per_req": ratio("cpu_sched_us_per_req"),
            "rps": ratio("rps"),
            "p50": ratio("p50_ms"),
        }
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)


def render(cells: list[dict[str, Any]], cost: dict[str, dict[str, float | None]], phases: list[dict[str, Any]],
           cores: int | None) -> str:
    # report.markdown's table, a row per replica count: its "target" names the count and the key.
    rows = [{**c, "target": f"{c['replicas']} replica{'s' if c['replicas'] > 1 else ''}, {c['key']} key",
             "cpu_process": "all replicas", "errors": c["errors_all_rounds"],
             "error_samples": c["error_samples_all_rounds"]} for c in cells]
    lines = [SPREAD_NOTE, f"CPU µs/req is summed over all replicas ({cores} cores shared by everything); with "
             "several rounds each row is the median round by sched CPU, and errors count every round.", "",
             markdown(rows, {}, {}, {})]
    if cost:
        lines += ["", "| vs 1 replica | +CPU µs/req | +sched µs/req | sched CPU/req | req/s | p50 |",
                  "|---|--:|--:|--:|--:|--:|"]
        columns = ("cpu_us_per_req_extra", "cpu_sched_us_per_req_extra", "cpu_per_req", "rps", "p50")
        lines += [f"| {name} | " + " | ".join(_fmt(row[k]) for k in columns) + " |" for name, row in cost.items()]
    lines += ["", "Where the CPU goes, sched µs per request (cores busy = their sum times req/s; machine busy = "
              f"all of the machine's {cores} cores from /proc/stat, so the difference is what else was running):",
              "", "| key mode c | replicas | all replicas | fake upstream | load generator "
              "| PostgreSQL + Redis | sum | cores busy | machine busy |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for c in cells:
        parts = [c["cpu_sched_us_per_req"], c["upstream_cpu_us_per_req"], c["loadgen_cpu_us_per_req"],
                 c["services_cpu_us_per_req"]]
        total = None if None in parts else round(sum(parts), 1)
        busy = None if total is None else round(total * c["rps"] / 1e6, 2)
        lines.append(f"| {c['key']} {c['mode']} c={c['concurrency']} | {c['replicas']} | "
                     + " | ".join(_fmt(v) for v in (*parts, total, busy, c["machine_busy_cores"])) + " |")
    lines += ["", "| replicas | round | failed requests | requests sent (all so far) | usage rows after SIGTERM "
              "| match | limited key statuses in db | limit probe: admitted / sent (per-replica limits would admit) "
              "| replica exit codes |", "|--:|--:|--:|--:|--:|---|---|---|---|"]
    for p in phases:
        ch, pr = p["check"], p["probe"]
        limited = ", ".join(f"{s}: {n}" for s, n in ch["rows_by_key_and_status"].get(KEY_NAMES["limited"], {}).items())
        probe = "-" if pr is None else (f"{pr['admitted']} / {pr['sent']} ({pr['per_replica_limits_would_admit']})"
                                        f"{'' if pr['global'] else ' NOT GLOBAL'}")
        lines.append(f"| {p['replicas']} | {p['round']} | {ch['failed_requests']} | {ch['requests_sent_so_far']} "
                     f"| {ch['usage_rows']} "
                     f"| {'yes' if ch['rows_match'] else 'NO'} | {limited or '-'} | {probe} "
                     f"| {', '.join(str(e) for e in ch['replica_exit_codes'])} |")
    return "\n".join(lines)


def passed(phases: list[dict[str, Any]]) -> bool:
    return all(
        p["check"]["rows_match"] and p["check"]["limited_key_all_200"]
        and all(code == 0 for code in p["check"]["replica_exit_codes"])
        and (p["probe"] is None or p["probe"]["global"])
        and p["check"]["failed_requests"] == 0
        for p in phases
    )


# -- main --------------------------------------------------------------------------------------------------


def git_dirty() -> list[str] | None:
    """Tracked files changed in the working tree, which the replicas run as they are."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line[3:] for line in done.stdout.splitlines()]


def tollway(command: list[str], env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`tollway {' '.join(args[:2])}` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def setup(args: argparse.Namespace, tmp: Path, servers: list[Server]) -> tuple[Bench, str]:
    py = sys.executable
    fake_port = free_port()
    fake = Server("fake-upstream", [py, str(BENCH / "fake_upstream.py"), "--port", str(fake_port)], tmp / "fake.log")
    servers.append(fake)
    fake.start()
    wait_tcp(fake, fake_port)
    storage, why = bench_database(f"tollway_replicas_{os.getpid()}")
    if storage is None:
        raise RuntimeError(why)
    # One config for every replica (each gets --port), so they share the limits prefix, which procs derives
    # from this port: a free one now, so no other bench run on this Redis uses the same prefix.
    config = tmp / "tollway.toml"
    write_tollway_config(config, tmp, free_port(), fake_port, storage_url=storage, limits_url=BENCH_REDIS)
    command, env = tollway_candidates(REPO, py)[0]
    # On PostgreSQL, serve does not migrate: the schema comes first, as an operator would do it.
    tollway(command, env, "migrate", "--config", str(config))
    made, why = create_tollway_key([(command, env)], config)
    if made is None:
        raise RuntimeError(f"`keys create` failed:\n{why}")
    headers = {"plain": client_headers(made.api_key)}
    limited = tollway(command, env, "keys", "create", "--config", str(config), "--name", KEY_NAMES["limited"],
                      *LIMITED_KEY)
    headers["limited"] = client_headers(limited.strip().splitlines()[-1])
    # Before any replica starts, so none has to wait for its next key reload to know them.
    probe_keys = {}
    for n in dict.fromkeys(args.replicas):
        out = tollway(command, env, "keys", "create", "--config", str(config), "--name", f"probe-{n}",
                      "--rpm", str(args.probe_rpm))
        probe_keys[n] = out.strip().splitlines()[-1]
    return Bench(args, tmp, config, command, env, headers, probe_keys, fake, servers), storage


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="tollway-replicas-"))
    servers: list[Server] = []
    keep_tmp = args.keep_tmp
    load_at_start = os.getloadavg()
    try:
        bench, storage = setup(args, tmp, servers)
        print(f"cores={os.cpu_count()} clk_tck={CLK_TCK} replicas={args.replicas} rounds={args.rounds} tmp={tmp}")
        print(SPREAD_NOTE, flush=True)
        started, dirty = time.monotonic(), git_dirty()
        phases, probed = [], set()
        for round_no in range(1, args.rounds + 1):
            for n in args.replicas:
                # The probe is a check, not a measurement: once per replica count, on that count's own key.
                phases.append(run_phase(bench, storage, n, round_no, probe=n not in probed))
                probed.add(n)
        cells = median_cells(phases)
        cost = spreading_cost(cells)
        ok = passed(phases)
        print("\n" + render(cells, cost, phases, os.cpu_count()) + "\n")
        print("checks: " + ("all passed" if ok else "FAILED (see the table above)"))
        meta = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(REPO),
            "uncommitted_at_start": dirty,
            "load_average_at_start": load_at_start,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "clk_tck": CLK_TCK,
            "load_average_at_end": os.getloadavg(),
            "wall_seconds": round(time.monotonic() - started, 1),
            "args": dict(vars(args)),
            "spreading": SPREAD_NOTE,
            "postgres": BENCH_POSTGRES.rsplit("/", 1)[0] + "/tollway_replicas_<pid>",
            "redis": BENCH_REDIS,
            "tollway_command": [*bench.command, "serve", "--config", "<tmp>/tollway.toml", "--port", "<port>"],
            "cpu_note": "cpu_us_per_req: utime+stime of all replicas (and their children) / requests issued; "
                        "services_cpu_us_per_req: the PostgreSQL postmaster's tree and redis-server, which "
                        "anything else using them at the time also adds to",
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": meta, "cells": cells, "vs_one_replica": cost, "phases": phases, "passed": ok}
        RESULTS.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
        keep_tmp = keep_tmp or not ok
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"replicas bench failed: {exc}", file=sys.stderr)
        keep_tmp = True
        return 2
    finally:
        for server in reversed(servers):
            server.stop()
        if keep_tmp:
            print(f"logs and config kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
