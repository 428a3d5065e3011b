"""Benchmark Tollway against a bare aiohttp relay, LiteLLM's proxy and the fake upstream itself, on loopback.

    .venv/bin/python bench/run.py [--requests N] [--quick]

Starts the fake upstream, the bare relay, Tollway and LiteLLM as subprocesses, measures non-stream and
stream at each concurrency (1, 32, 256), for the anthropic passthrough and the openai translation, then what
each hop adds to the time to first byte; prints a markdown table and writes bench/results/latest.json and a
chart, bench/results/latest.png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litellm_proxy
import orjson
import uvloop
from loadgen import (
    ANTHROPIC,
    ANTHROPIC_VIA_OPENAI,
    OPENAI_CLIENT_MODEL,
    OPENAI_DIRECT,
    OPENAI_UPSTREAM_MODEL,
    Leg,
    LoadResult,
    PairedTtfb,
    Workload,
    client_headers,
    new_session,
    openai_headers,
    percentile_ms,
    run_load,
    ttfb_rounds,
)
from procs import (
    BENCH_REDIS,
    CLK_TCK,
    LIMITED_KEY,
    Server,
    bench_database,
    cpu_sample,
    create_tollway_key,
    free_port,
    git_commit,
    git_dirty,
    machine_ticks,
    memory_kb,
    paused,
    raise_interrupt,
    raise_nofile,
    reset_peak,
    src_env,
    tollway_candidates,
    wait_http_ok,
    wait_tcp,
    write_tollway_config,
)
from rawclient import RawClient
from report import chart, goals, markdown, metering, ratios, scale_out, translation, versus_litellm

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "latest.json"
CHART = BENCH / "results" / "latest.png"
TARGETS = ("direct", "relay", "relay-tollway-client", "relay-raw", "tollway", "tollway-limited", "tollway-shared",
           "litellm", "direct-openai", "tollway-openai")
# tollway-shared: the tollway-limited row on PostgreSQL and Redis (what scale-out costs a replica); it is
# skipped when they are not reachable at procs.BENCH_POSTGRES and procs.BENCH_REDIS.
# litellm: LiteLLM's proxy in its own venv (bench/litellm_proxy.py); skipped if it cannot be installed or started.
# relay-tollway-client (the bare relay on Tollway's upstream client) and relay-raw (raw_relay.py: no aiohttp at all)
# are time-to-first-byte rows only: what the server and the client of a Python hop cost, apart.
MODES = ("non-stream", "stream")
TTFB_HOPS = ("relay", "relay-tollway-client", "relay-raw", "tollway", "tollway-limited", "litellm")
"""The rows whose added time to first byte over `direct` is measured, request by request."""
POOL_SWEEP_WAIT = 20.0
"""Seconds past the 15 s after which the gateways' upstream pools close idle connections."""
TTFB_ONLY = frozenset({"relay-tollway-client", "relay-raw"})


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    process: Server
    """The process whose CPU is charged to this row."""
    workload: Workload = ANTHROPIC
    share: float = 1.0
    """The fraction of a cell's requests this target gets (LiteLLM is slow: its cells would take minutes)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, help="measured requests per c>1 cell (default 2000, quick 300)")
    parser.add_argument("--requests-c1", type=int, help="measured requests per c=1 cell (default requests/4)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a measurement")
    parser.add_argument("--concurrency", default="1,32,256", help="comma-separated levels (default 1,32,256)")
    parser.add_argument("--litellm-share", type=float, default=0.25,
                        help="fraction of each cell's requests the litellm row gets (default 0.25; at least c)")
    parser.add_argument("--litellm-reinstall", action="store_true",
                        help="throw away .cache/bench-litellm-venv and install litellm[proxy] again")
    parser.add_argument("--ttfb-pairs", type=int,
                        help="requests per target in the TTFB comparison, stream, c=1 (default 1000, quick 100)")
    parser.add_argument("--no-chart", action="store_true", help="do not write results/latest.png")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each cell this many times, targets taking turns; keep the median (default 1)")
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds before a cell stops issuing")
    parser.add_argument(
        "--frame-gap-ms",
        type=float,
        default=0.0,
        help="fake upstream sleeps this long between SSE frames (0: whole stream in one write)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    args = parser.parse_args()
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    args.targets = [t for t in TARGETS if t in {s.strip() for s in args.targets.split(",")}]
    if not args.concurrency or min(args.concurrency) < 1 or not args.targets:
        parser.error("need at least one concurrency >= 1 and one known target")
    if args.requests is None:
        args.requests = 300 if args.quick else 2000
    if args.requests_c1 is None:
        args.requests_c1 = max(1, args.requests // 4)
    if args.ttfb_pairs is None:
        args.ttfb_pairs = 100 if args.quick else 1000
    return args


def start_stack(args: argparse.Namespace, tmp: Path, servers: list[Server]) -> tuple[list[Target], dict[str, str]]:
    """Start what the chosen targets need; a Tollway that cannot start is skipped, not fatal."""
    py = sys.executable
    fake_port = free_port()
    fake_argv = [py, str(BENCH / "fake_upstream.py"), "--port", str(fake_port)]
    fake = Server("fake-upstream", [*fake_argv, "--frame-gap-ms", str(args.frame_gap_ms)], tmp / "fake.log")
    servers.append(fake)
    fake.start()
    wait_tcp(fake, fake_port)
    fake_url = f"http://127.0.0.1:{fake_port}"
    targets: list[Target] = []
    if "direct" in args.targets:
        # The fake accepts any key; sending one keeps the headers identical across rows.
        targets.append(Target("direct", f"{fake_url}/v1/messages", client_headers("bench"), fake))
    if "direct-openai" in args.targets:
        url = f"{fake_url}/v1/chat/completions"
        targets.append(Target("direct-openai", url, openai_headers("bench"), fake, OPENAI_DIRECT))
    relays = {"relay": ["bare_relay.py"], "relay-tollway-client": ["bare_relay.py", "--client", "tollway"],
              "relay-raw": ["raw_relay.py"]}
    for name, (script, *extra) in relays.items():
        if name not in args.targets:
            continue
        port = free_port()
        argv = [py, str(BENCH / script), "--port", str(port), "--upstream", fake_url, *extra]
        # The last two import Tollway's client: from this checkout's src whether or not it is installed.
        relay = Server(f"bare-{name}", argv, tmp / f"{name}.log", src_env(REPO))
        servers.append(relay)
        relay.start()
        wait_tcp(relay, port)
        targets.append(Target(name, f"http://127.0.0.1:{port}/v1/messages", client_headers("bench"), relay))
    gateway_targets, skipped = start_gateway(args, tmp, fake_port, servers, py)
    targets += gateway_targets
    if "tollway-shared" in args.targets:
        shared, why = start_shared(tmp, fake_port, servers, py)
        if shared is None:
            skipped["tollway-shared"] = why
        else:
            targets.append(shared)
    if "litellm" in args.targets:
        port = free_port()
        proxy, why = litellm_proxy.start(tmp, fake_port, port, servers, args.litellm_reinstall)
        if proxy is None:
            skipped["litellm"] = why
        else:
            url = f"http://127.0.0.1:{port}/v1/messages"
            targets.append(Target("litellm", url, client_headers(litellm_proxy.MASTER_KEY), proxy,
                                  share=args.litellm_share))
    return sorted(targets, key=lambda t: TARGETS.index(t.name)), skipped


def start_gateway(
    args: argparse.Namespace, tmp: Path, fake_port: int, servers: list[Server], py: str
) -> tuple[list[Target], dict[str, str]]:
    """One Tollway serves both of its rows. If it cannot start with the openai upstream in its config (the
    translation does not import yet, say), tollway-openai is skipped and Tollway retried without it."""
    wanted = [name for name in ("tollway", "tollway-limited", "tollway-openai") if name in args.targets]
    skipped: dict[str, str] = {}
    while wanted:
        with_openai = "tollway-openai" in wanted
        started, why = start_tollway(tmp, fake_port, servers, py, with_openai)
        if started is not None:
            gateway, url, headers, limited = started
            workloads = {"tollway": ANTHROPIC, "tollway-limited": ANTHROPIC, "tollway-openai": ANTHROPIC_VIA_OPENAI}
            return [Target(name, url, limited if name == "tollway-limited" else headers, gateway, workloads[name])
                    for name in wanted], skipped
        if not with_openai:
            skipped["tollway"] = why
            break
        skipped["tollway-openai"] = why
        wanted.remove("tollway-openai")
    return [], skipped


def start_shared(tmp: Path, fake_port: int, servers: list[Server], py: str) -> tuple[Target | None, str]:
    """A second Tollway on a fresh PostgreSQL database and Redis limits, with the same limited key."""
    storage, why = bench_database(f"tollway_bench_{os.getpid()}")
    if storage is None:
        return None, why
    port = free_port()
    config = tmp / "tollway-shared.toml"
    write_tollway_config(config, tmp, port, fake_port, storage_url=storage, limits_url=BENCH_REDIS)
    command, env = tollway_candidates(REPO, py)[0]
    # On PostgreSQL, serve does not migrate: the schema comes first, as an operator would do it.
    steps = [["migrate", "--config", str(config)],
             ["keys", "create", "--config", str(config), "--name", "bench-shared", *LIMITED_KEY]]
    output = ""
    for step in steps:
        done = subprocess.run([*command, *step], env=env, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            return None, f"`tollway {' '.join(step[:2])}` failed: {done.stderr.strip()[-500:]}"
        output = done.stdout
    key = output.strip().splitlines()[-1]
    gateway = Server("tollway-shared", [*command, "serve", "--config", str(config)], tmp / "tollway-shared.log", env)
    servers.append(gateway)
    gateway.start()
    try:
        wait_http_ok(gateway, f"http://127.0.0.1:{port}/healthz")
    except RuntimeError as exc:
        return None, str(exc)
    return Target("tollway-shared", f"http://127.0.0.1:{port}/v1/messages", client_headers(key), gateway), ""


def start_tollway(
    tmp: Path, fake_port: int, servers: list[Server], py: str, with_openai: bool
) -> tuple[tuple[Server, str, dict[str, str], dict[str, str]] | None, str]:
    """(the server, its /v1/messages URL, client headers with a fresh key, and with a rate-limited key), or
    None and why."""
    stem = "tollway" if with_openai else "tollway-without-openai"
    port = free_port()
    config = tmp / f"{stem}.toml"
    write_tollway_config(
        config, tmp, port, fake_port, (OPENAI_CLIENT_MODEL, OPENAI_UPSTREAM_MODEL) if with_openai else None
    )
    setup, why = create_tollway_key(tollway_candidates(REPO, py), config)
    if setup is None:
        return None, f"`keys create` failed with every launcher:\n{why}"
    limited = subprocess.run([*setup.command, "keys", "create", "--config", str(config), "--name", "bench-limited",
                              *LIMITED_KEY], env=setup.env, capture_output=True, text=True, timeout=60, check=False)
    if limited.returncode != 0:
        return None, f"`keys create` with limits failed: {limited.stderr.strip()[-500:]}"
    limited_key = limited.stdout.strip().splitlines()[-1]
    gateway = Server("tollway", [*setup.command, "serve", "--config", str(config)], tmp / f"{stem}.log", setup.env)
    servers.append(gateway)
    gateway.start()
    try:
        wait_http_ok(gateway, f"http://127.0.0.1:{port}/healthz")
    except RuntimeError as exc:
        gateway.stop()
        return None, str(exc)
    url = f"http://127.0.0.1:{port}/v1/messages"
    return (gateway, url, client_headers(setup.api_key), client_headers(limited_key)), ""


@dataclass(frozen=True)
class Cpu:
    ticks: int
    ns: int

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.ticks - other.ticks, self.ns - other.ns)


def cpu_of(server: Server) -> Cpu:
    return Cpu(*cpu_sample(server.pid))


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarise(
    target: Target, mode: str, c: int, res: LoadResult, cpu: Cpu, up: Cpu, gen: float, mem: dict[str, int]
) -> dict[str, Any]:
    done = res.ok + res.errors

    def per_req(seconds: float) -> float | None:
        return round(seconds * 1e6 / done, 1) if done else None

    p50, p99 = res.percentile_ms(0.50), res.percentile_ms(0.99)
    return {
        "target": target.name,
        "mode": mode,
        "concurrency": c,
        "requests": res.ok,
        "errors": res.errors,
        "seconds": round(res.elapsed, 3),
        "rps": round(res.rps, 1),
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "ttfb_p50_ms": _ms(res.ttfb_percentile_ms(0.50)),
        "ttfb_p99_ms": _ms(res.ttfb_percentile_ms(0.99)),
        "peak_rss_mb": round(mem["peak"] / 1024, 1),
        "rss_after_mb": round(mem["rss"] / 1024, 1),
        "cpu_process": target.process.name,
        "cpu_ticks": cpu.ticks,
        "cpu_us_per_req": per_req(cpu.ticks / CLK_TCK),
        "cpu_sched_us_per_req": per_req(cpu.ns / 1e9),
        "upstream_cpu_us_per_req": per_req(up.ns / 1e9),
        "loadgen_cpu_us_per_req": per_req(gen),
        "error_samples": res.error_samples,
    }


async def measure(
    targets: list[Target], fake: Server, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    ttfb_targets, targets = targets, [t for t in targets if t.name not in TTFB_ONLY]
    async with new_session(max(args.concurrency) * 2) as session:
        # Mode and concurrency outermost, so the rows being compared run minutes apart, not tens of minutes.
        for mode in MODES:
            for c in args.concurrency:
                rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
                # Targets take turns round after round, so a slow spell of the shared machine (or the
                # previous cell's rows being written) falls on all of them; each keeps its median round.
                for _ in range(args.rounds):
                    for t in targets:
                        total = max(c, round((args.requests_c1 if c == 1 else args.requests) * t.share))
                        warmup = max(c, min(200, total // 10))
                        stream = mode == "stream"
                        await run_load(session, t.url, t.headers, t.workload, stream, c, warmup, args.cell_timeout)
                        # The peak is the cell's own: VmHWM set back to the current RSS before it.
                        reset_peak(t.process.pid)
                        cpu0, up0, gen0 = cpu_of(t.process), cpu_of(fake), _own_cpu()
                        res = await run_load(session, t.url, t.headers, t.workload, stream, c, total,
                                             args.cell_timeout)
                        cpu, up, gen = cpu_of(t.process) - cpu0, cpu_of(fake) - up0, _own_cpu() - gen0
                        mem = memory_kb(t.process.pid)
                        rounds[t.name].append(summarise(t, mode, c, res, cpu, up, gen, mem))
                for t in targets:
                    ordered = sorted(rounds[t.name], key=lambda cell: float(cell["cpu_us_per_req"]))
                    cell = ordered[len(ordered) // 2]
                    cell["rounds_cpu_us_per_req"] = [r["cpu_us_per_req"] for r in rounds[t.name]]
                    cells.append(cell)
                    print(
                        f"  {t.name:15} {mode:10} c={c:<3} {cell['rps']:>9} req/s  p50 {cell['p50_ms']} ms  "
                        f"p99 {cell['p99_ms']} ms  errors {cell['errors']}  cpu {cell['cpu_us_per_req']} us/req "
                        f"(sched {cell['cpu_sched_us_per_req']}; rounds {cell['rounds_cpu_us_per_req']})  "
                        f"peak {cell['peak_rss_mb']} MB",
                        flush=True,
                    )
    if max(args.concurrency) > 1:
        # The c=32 and c=256 cells leave each gateway and relay with hundreds of idle connections to the
        # upstream, which their pools close 15 s after last use (Tollway's client and aiohttp's alike), all
        # at once: measured, closing 256 loopback connections in one go (both ends in one process) held a loop for
        # 3.5-4.5 ms. Landing in the rounds, that is a transition from the load, not c=1: the rounds come after.
        print(f"  waiting {POOL_SWEEP_WAIT:.0f} s for the load's idle upstream connections to be closed", flush=True)
        await asyncio.sleep(POOL_SWEEP_WAIT)
    await settle([t.process for t in ttfb_targets] + [fake])
    ttfb = await measure_ttfb(ttfb_targets, args)
    return cells, ttfb


async def settle(servers: list[Server], busy: float = 0.02, window: float = 0.5, patience: float = 60.0) -> None:
    """Wait until no server uses more than ``busy`` of a core over ``window`` seconds, for ``patience`` at most:
    after LiteLLM's c=256 cells, its own work went on into what came next."""
    unique = {s.pid: s for s in servers}
    started = time.monotonic()
    while True:
        before = {pid: cpu_of(s) for pid, s in unique.items()}
        await asyncio.sleep(window)
        used = {pid: (cpu_of(s) - before[pid]).ns / (window * 1e9) for pid, s in unique.items()}
        waited = time.monotonic() - started
        if max(used.values(), default=0.0) <= busy:
            print(f"  servers quiet after {waited:.1f} s", flush=True)
            return
        if waited >= patience:
            print(f"  !! servers still busy after {waited:.0f} s: {used}", flush=True)
            return


async def measure_ttfb(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    """What each hop adds to the first byte of a stream at c=1: round after round, the same request goes to
    `direct` and to every hop, one after the other in a turning order (`ttfb_rounds`), and each hop's time is
    taken less direct's of the same round, on a blocking client that reads the clock on the wire
    (`rawclient`). p99 of these differences is the figure; p99 of the hop's TTFB minus
    p99 of direct's is given too. A hop with a ``share`` below 1 (LiteLLM) has its own rounds, that share of
    them, after the others': measured, LiteLLM's work after each answer went on into the next hops' times and
    raised their p99 by a fifth to a half."""
    by_name = {t.name: t for t in targets}
    direct = by_name.get("direct")
    if direct is None:
        return {}
    base = Leg(direct.url, direct.headers, direct.workload)
    hops = {name: (Leg(t.url, t.headers, t.workload), max(20, round(args.ttfb_pairs * t.share)))
            for name in TTFB_HOPS if (t := by_name.get(name)) is not None}
    slow = {name for name in hops if by_name[name].share < 1}
    rounds: dict[str, PairedTtfb] = {}
    conditions: dict[str, dict[str, Any]] = {}
    client = RawClient()
    try:
        for block in ({n: h for n, h in hops.items() if n not in slow}, {n: h for n, h in hops.items() if n in slow}):
            if not block:
                continue
            needed = {id(direct.process)} | {id(by_name[name].process) for name in block}
            idle = list({id(t.process): t.process for t in targets if id(t.process) not in needed}.values())
            with paused(idle):
                warm_up = {name: (leg, 50) for name, (leg, _) in block.items()}
                await asyncio.to_thread(ttfb_rounds, client, base, warm_up, True, args.cell_timeout)
                before, started = machine_ticks(), time.monotonic()
                rounds.update(await asyncio.to_thread(ttfb_rounds, client, base, block, True, args.cell_timeout))
                after = machine_ticks()
            total, busy, steal = (b - a for a, b in zip(before, after, strict=True))
            names = sorted(s.name for s in idle)
            seen: dict[str, Any] = {"seconds": round(time.monotonic() - started, 1), "paused": names,
                    "machine_busy_pct": round(100 * busy / max(total, 1), 1),
                    "steal_pct": round(100 * steal / max(total, 1), 2)}
            print(f"  ttfb rounds of {', '.join(block)}: {seen['seconds']} s, machine busy {seen['machine_busy_pct']}%"
                  f", steal {seen['steal_pct']}%, paused {', '.join(names) or 'none'}", flush=True)
            conditions.update(dict.fromkeys(block, seen))
    finally:
        client.close()
    found: dict[str, Any] = {}
    for name, res in rounds.items():
        added = res.added_ns()
        hop_p99, base_p99 = percentile_ms(res.hop_ns, 0.99), percentile_ms(res.base_ns, 0.99)
        found[name] = {
            "pairs": len(added),
            "errors": res.errors,
            "added_p50_ms": _ms(percentile_ms(added, 0.50)),
            "added_p90_ms": _ms(percentile_ms(added, 0.90)),
            "added_p99_ms": _ms(percentile_ms(added, 0.99)),
            "ttfb_p50_ms": _ms(percentile_ms(res.hop_ns, 0.50)),
            "ttfb_p99_ms": _ms(hop_p99),
            "direct_ttfb_p50_ms": _ms(percentile_ms(res.base_ns, 0.50)),
            "direct_ttfb_p99_ms": _ms(base_p99),
            "p99_minus_direct_p99_ms": _ms(hop_p99 - base_p99 if hop_p99 is not None and base_p99 is not None
                                           else None),
            "rounds_conditions": conditions.get(name),
            "error_samples": res.error_samples,
        }
        row = found[name]
        print(f"  ttfb {name:20} added p50 {row['added_p50_ms']} ms  p90 {row['added_p90_ms']} ms  "
              f"p99 {row['added_p99_ms']} ms  ({row['pairs']} pairs, {row['errors']} errors)", flush=True)
    return found


def _side_results(name: str) -> dict[str, Any] | None:
    """streams.json or startup.json from their own scripts, if they were run: their summaries join the goals."""
    path = BENCH / "results" / name
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, raise_interrupt)
    # c=256 holds hundreds of sockets per target in this process; the servers inherit the limit.
    nofile = raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    servers: list[Server] = []
    keep_tmp = args.keep_tmp
    try:
        targets, skipped = start_stack(args, tmp, servers)
        for name, why in skipped.items():
            print(f"!! {name} skipped:\n{why}\n", file=sys.stderr, flush=True)
            keep_tmp = True
        print(f"cores={os.cpu_count()} clk_tck={CLK_TCK} nofile={nofile} targets={[t.name for t in targets]} "
              f"tmp={tmp}")
        started, load_at_start = time.monotonic(), os.getloadavg()
        cells, ttfb = uvloop.run(measure(targets, servers[0], args))
        # Each server's peak since it started (all cells), before they are stopped.
        memory = {s.name: {k: round(v / 1024, 1) for k, v in memory_kb(s.pid).items()}
                  for s in servers if s.alive()}
        rat, trans, meter, shared = ratios(cells), translation(cells), metering(cells), scale_out(cells)
        vs = versus_litellm(cells)
        side = {"streams": _side_results("streams.json"), "startup": _side_results("startup.json")}
        goal = goals(cells, ttfb, side)
        print("\n" + markdown(cells, rat, trans, skipped, meter, shared, vs, ttfb, goal) + "\n")
        meta = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(REPO), "src_uncommitted_changes": git_dirty(REPO),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "clk_tck": CLK_TCK,
            "wall_seconds": round(time.monotonic() - started, 1),
            "args": {k: v for k, v in vars(args).items()},
            "tollway_command": next((s.argv for s in servers if s.name == "tollway"), None),
            "litellm_command": next((s.argv for s in servers if s.name == "litellm"), None),
            "litellm_version": litellm_proxy.version() if any(s.name == "litellm" for s in servers) else None,
            "nofile": nofile,
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
            "memory_mb_by_process": memory,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": meta, "cells": cells, "ratios": rat, "translation": trans, "metering": meter,
               "scale_out": shared, "versus_litellm": vs, "ttfb": ttfb, "goals": goal,
               "skipped": skipped}
        RESULTS.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
        if not args.no_chart:
            why_not = chart(cells, CHART, f"commit {meta['commit']}, {meta['when']}, {os.cpu_count()} cores")
            print(f"wrote {CHART.relative_to(REPO)}" if why_not is None else f"no chart: {why_not}")
        return 1 if any(c["errors"] for c in cells) else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        keep_tmp = True
        return 2
    finally:
        for server in reversed(servers):
            server.stop()
        if keep_tmp:
            print(f"logs and configs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
