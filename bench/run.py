"""Benchmark Tollway against a bare aiohttp relay and the fake upstream itself, side by side on loopback.

    .venv/bin/python bench/run.py [--requests N] [--quick]

Starts the fake upstream, the bare relay and Tollway as subprocesses, measures non-stream and stream at
each concurrency, prints a markdown table and writes bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
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
from types import FrameType
from typing import Any

import orjson
import uvloop
from loadgen import LoadResult, client_headers, new_session, run_load
from procs import (
    CLK_TCK,
    Server,
    cpu_sample,
    create_tollway_key,
    free_port,
    tollway_candidates,
    wait_http_ok,
    wait_tcp,
    write_tollway_config,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "latest.json"
TARGETS = ("direct", "relay", "tollway")
MODES = ("non-stream", "stream")


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    process: Server
    """The process whose CPU is charged to this row."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, help="measured requests per c>1 cell (default 2000, quick 300)")
    parser.add_argument("--requests-c1", type=int, help="measured requests per c=1 cell (default requests/4)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a measurement")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated levels (default 1,32)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="subset of direct,relay,tollway")
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
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # A SIGTERM to the harness must still run the finally that stops the servers.
    raise KeyboardInterrupt


def start_stack(args: argparse.Namespace, tmp: Path, servers: list[Server]) -> tuple[list[Target], dict[str, str]]:
    """Start what the chosen targets need; a Tollway that cannot start is skipped, not fatal."""
    py = sys.executable
    skipped: dict[str, str] = {}
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
    if "relay" in args.targets:
        port = free_port()
        relay = Server(
            "bare-relay",
            [py, str(BENCH / "bare_relay.py"), "--port", str(port), "--upstream", fake_url],
            tmp / "relay.log",
        )
        servers.append(relay)
        relay.start()
        wait_tcp(relay, port)
        targets.append(Target("relay", f"http://127.0.0.1:{port}/v1/messages", client_headers("bench"), relay))
    if "tollway" in args.targets:
        target, why = start_tollway(tmp, fake_port, servers, py)
        if target is None:
            skipped["tollway"] = why
        else:
            targets.append(target)
    return targets, skipped


def start_tollway(tmp: Path, fake_port: int, servers: list[Server], py: str) -> tuple[Target | None, str]:
    port = free_port()
    config = tmp / "tollway.toml"
    write_tollway_config(config, tmp, port, fake_port)
    setup, why = create_tollway_key(tollway_candidates(REPO, py), config)
    if setup is None:
        return None, f"`keys create` failed with every launcher:\n{why}"
    gateway = Server("tollway", [*setup.command, "serve", "--config", str(config)], tmp / "tollway.log", setup.env)
    servers.append(gateway)
    gateway.start()
    try:
        wait_http_ok(gateway, f"http://127.0.0.1:{port}/healthz")
    except RuntimeError as exc:
        gateway.stop()
        return None, str(exc)
    url = f"http://127.0.0.1:{port}/v1/messages"
    return Target("tollway", url, client_headers(setup.api_key), gateway), ""


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


def summarise(target: Target, mode: str, c: int, res: LoadResult, cpu: Cpu, up: Cpu, gen: float) -> dict[str, Any]:
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
        "cpu_process": target.process.name,
        "cpu_ticks": cpu.ticks,
        "cpu_us_per_req": per_req(cpu.ticks / CLK_TCK),
        "cpu_sched_us_per_req": per_req(cpu.ns / 1e9),
        "upstream_cpu_us_per_req": per_req(up.ns / 1e9),
        "loadgen_cpu_us_per_req": per_req(gen),
        "error_samples": res.error_samples,
    }


async def measure(targets: list[Target], fake: Server, args: argparse.Namespace) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    async with new_session(max(args.concurrency) * 2) as session:
        # Mode and concurrency outermost, so the rows being compared run minutes apart, not tens of minutes.
        for mode in MODES:
            for c in args.concurrency:
                total = args.requests_c1 if c == 1 else args.requests
                warmup = max(c, min(200, total // 10))
                for t in targets:
                    stream = mode == "stream"
                    await run_load(session, t.url, t.headers, stream, c, warmup, args.cell_timeout)
                    cpu0, up0, gen0 = cpu_of(t.process), cpu_of(fake), _own_cpu()
                    res = await run_load(session, t.url, t.headers, stream, c, total, args.cell_timeout)
                    cpu, up, gen = cpu_of(t.process) - cpu0, cpu_of(fake) - up0, _own_cpu() - gen0
                    cell = summarise(t, mode, c, res, cpu, up, gen)
                    cells.append(cell)
                    print(
                        f"  {t.name:8} {mode:10} c={c:<3} {cell['rps']:>9} req/s  p50 {cell['p50_ms']} ms  "
                        f"p99 {cell['p99_ms']} ms  errors {cell['errors']}  cpu {cell['cpu_us_per_req']} us/req "
                        f"(sched {cell['cpu_sched_us_per_req']})",
                        flush=True,
                    )
    return cells


def ratios(cells: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    by_key = {(c["target"], c["mode"], c["concurrency"]): c for c in cells}
    out: dict[str, dict[str, float | None]] = {}
    for (target, mode, conc), gw in by_key.items():
        relay = by_key.get(("relay", mode, conc))
        if target != "tollway" or relay is None:
            continue

        def div(key: str, num: dict[str, Any] = gw, den: dict[str, Any] = relay) -> float | None:
            a, b = num.get(key), den.get(key)
            return round(a / b, 2) if a is not None and b else None

        out[f"{mode} c={conc}"] = {
            "cpu_per_req": div("cpu_us_per_req"),
            "cpu_sched_per_req": div("cpu_sched_us_per_req"),
            "p50": div("p50_ms"),
            "rps": div("rps"),
        }
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)


def markdown(cells: list[dict[str, Any]], rat: dict[str, dict[str, float | None]], skipped: dict[str, str]) -> str:
    lines = [
        "| target | mode | c | req/s | p50 ms | p99 ms | errors | CPU µs/req | sched µs/req | CPU of |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in cells:
        row = (c["target"], c["mode"], c["concurrency"], c["rps"], c["p50_ms"], c["p99_ms"], c["errors"])
        cpu = (c["cpu_us_per_req"], c["cpu_sched_us_per_req"], c["cpu_process"])
        lines.append("| " + " | ".join(_fmt(v) for v in (*row, *cpu)) + " |")
    if rat:
        lines += ["", "| Tollway ÷ bare relay | CPU/req | sched CPU/req | p50 | req/s |", "|---|--:|--:|--:|--:|"]
        for k, v in rat.items():
            cols = (v["cpu_per_req"], v["cpu_sched_per_req"], v["p50"], v["rps"])
            lines.append(f"| {k} | " + " | ".join(_fmt(x) for x in cols) + " |")
    for name, why in skipped.items():
        lines += ["", f"**{name} skipped:**", "```", why, "```"]
    samples = [(c, s) for c in cells for s in c["error_samples"]]
    if samples:
        lines += ["", "Error samples:"]
        lines += [f"- {c['target']} {c['mode']} c={c['concurrency']}: {s}" for c, s in samples]
    return "\n".join(lines)


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    servers: list[Server] = []
    keep_tmp = args.keep_tmp
    try:
        targets, skipped = start_stack(args, tmp, servers)
        for name, why in skipped.items():
            print(f"!! {name} skipped:\n{why}\n", file=sys.stderr, flush=True)
            keep_tmp = True
        print(f"cores={os.cpu_count()} clk_tck={CLK_TCK} targets={[t.name for t in targets]} tmp={tmp}")
        started = time.monotonic()
        cells = uvloop.run(measure(targets, servers[0], args))
        rat = ratios(cells)
        print("\n" + markdown(cells, rat, skipped) + "\n")
        meta = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "clk_tck": CLK_TCK,
            "wall_seconds": round(time.monotonic() - started, 1),
            "args": {k: v for k, v in vars(args).items()},
            "tollway_command": next((s.argv for s in servers if s.name == "tollway"), None),
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": meta, "cells": cells, "ratios": rat, "skipped": skipped}
        RESULTS.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
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
