"""Thousands of streams held open at once through one Tollway process, against a slow fake upstream.

    .venv/bin/python bench/streams.py                  # 5,000 streams, 30 deltas one second apart
    .venv/bin/python bench/streams.py --quick          # 300 streams, 8 deltas: a smoke test
    .venv/bin/python bench/streams.py --streams 2000 --deltas 20 --ramp 400

The fake upstream runs in its slow mode (`fake_upstream.py --deltas N --delta-interval-ms MS`): every stream
gets its head at once, then one `content_block_delta` per interval, then its end. Tollway (one `tollway serve`,
SQLite, the key with every limit and a balance on unless `--key plain`) relays them all. The client is one
aiohttp session without a connection cap; it opens `--ramp` streams a second until all are open, reads every
stream to its end and checks that it ends in `message_stop` with all its deltas.

Reported: errors; how many streams were open at once (a stream is open from its response headers to its last
byte); Tollway's resident memory (VmRSS) when idle (after a warm-up of `--warmup` streams has finished), while
all streams are open (the mean of the samples taken then) and after they have closed, and its peak (VmHWM);
memory per open stream = (RSS while all are open - RSS idle) / streams; Tollway's CPU over the run, per stream
and per relayed event, and the cores it kept busy while all streams were open. Writes results/streams.json.
Exit code 0 if every stream succeeded and all were open at once, 1 otherwise, 2 if a server could not
start, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from loadgen import ANTHROPIC, client_headers, percentile_ms
from procs import (
    CLK_TCK,
    LIMITED_KEY,
    Server,
    cpu_sample,
    create_tollway_key,
    free_port,
    git_commit,
    git_dirty,
    memory_kb,
    raise_interrupt,
    raise_nofile,
    tollway_candidates,
    wait_http_ok,
    wait_tcp,
    write_tollway_config,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "streams.json"
SAMPLE_EVERY = 0.5
MAX_ERROR_SAMPLES = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, help="streams held open at once (default 5000, quick 300)")
    parser.add_argument("--deltas", type=int, help="deltas per stream (default 30, quick 8)")
    parser.add_argument("--interval-ms", type=float, default=1000.0, help="between deltas (default 1000)")
    parser.add_argument("--ramp", type=float, default=500.0, help="streams opened per second (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="streams run (and finished) before idle RSS")
    parser.add_argument("--key", choices=("limited", "plain"), default="limited",
                        help="limited: rate limits, concurrency cap, balance and daily cap all on (default)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    args = parser.parse_args()
    if args.streams is None:
        args.streams = 300 if args.quick else 5000
    if args.deltas is None:
        args.deltas = 8 if args.quick else 30
    if args.streams < 1 or args.deltas < 1 or args.ramp <= 0:
        parser.error("--streams, --deltas and --ramp must be positive")
    return args


@dataclass
class Tally:
    opened: int = 0
    open_now: int = 0
    peak_open: int = 0
    ok: int = 0
    errors: int = 0
    ttfb_ns: list[int] = field(default_factory=list)
    durations_ns: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str], deltas: int,
                     tally: Tally) -> None:
    body = ANTHROPIC.bodies["stream"]
    t0 = time.perf_counter_ns()
    opened = False
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                tally.error(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return
            opened = True
            tally.opened += 1
            tally.open_now += 1
            tally.peak_open = max(tally.peak_open, tally.open_now)
            chunks: list[bytes] = []
            first = True
            async for chunk in resp.content.iter_any():
                if first:
                    tally.ttfb_ns.append(time.perf_counter_ns() - t0)
                    first = False
                chunks.append(chunk)
            data = b"".join(chunks)
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}")
        return
    finally:
        if opened:
            tally.open_now -= 1
    got = data.count(b"event: content_block_delta")
    if b"message_stop" not in data[-200:] or got != deltas:
        tally.error(f"stream cut short: {got}/{deltas} deltas, ends {data[-120:]!r}")
        return
    tally.ok += 1
    tally.durations_ns.append(time.perf_counter_ns() - t0)


async def run_streams(session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int, deltas: int,
                      ramp: float, tally: Tally) -> None:
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for i in range(n):
        # Open at `ramp` a second: a burst of thousands of connects would overflow the listen backlog.
        delay = started + i / ramp - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_stream(session, url, headers, deltas, tally)))
    await asyncio.gather(*tasks)


def _cpu_s(pid: int) -> float:
    return cpu_sample(pid)[1] / 1e9


async def measure(url: str, headers: dict[str, str], gateway: Server, fake: Server,
                  args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    # No total cap: a stream lasts deltas x interval; a read silent for 60 s is a failure.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        rss_start = memory_kb(gateway.pid)
        warm = Tally()
        print(f"warm-up: {args.warmup} streams ({args.deltas * args.interval_ms / 1000:.0f} s)...", flush=True)
        await run_streams(session, url, headers, args.warmup, args.deltas, args.ramp, warm)
        await asyncio.sleep(1.0)  # the usage rows of the warm-up flushed
        idle = memory_kb(gateway.pid)
        tally = Tally()
        samples: list[dict[str, Any]] = []
        cpu0, fake0, own0 = _cpu_s(gateway.pid), _cpu_s(fake.pid), time.process_time()
        t0 = time.perf_counter()
        done = asyncio.Event()

        async def sampler() -> None:
            last_t, last_cpu = t0, cpu0
            while not done.is_set():
                await asyncio.sleep(SAMPLE_EVERY)
                now, cpu = time.perf_counter(), _cpu_s(gateway.pid)
                mem = memory_kb(gateway.pid)
                samples.append({"t": round(now - t0, 2), "open": tally.open_now, "opened": tally.opened,
                                "rss_mb": round(mem["rss"] / 1024, 1),
                                "cores": round((cpu - last_cpu) / (now - last_t), 3)})
                last_t, last_cpu = now, cpu

        sampling = asyncio.create_task(sampler())
        print(f"opening {args.streams} streams at {args.ramp:.0f}/s...", flush=True)
        await run_streams(session, url, headers, args.streams, args.deltas, args.ramp, tally)
        elapsed = time.perf_counter() - t0
        done.set()
        await sampling
        cpu, fake_cpu, own = _cpu_s(gateway.pid) - cpu0, _cpu_s(fake.pid) - fake0, time.process_time() - own0
        await asyncio.sleep(2.0)  # let Tollway write the last usage rows and drop the connections' buffers
        after = memory_kb(gateway.pid)
    plateau = [s for s in samples if s["open"] >= args.streams]
    rss_during = statistics.fmean(s["rss_mb"] for s in plateau) if plateau else None
    events = args.streams * (args.deltas + 6)  # three head events, the deltas, three closing events
    idle_mb = idle["rss"] / 1024
    summary = {
        "streams": args.streams,
        "ok": tally.ok,
        "errors": tally.errors,
        "peak_open": tally.peak_open,
        "seconds": round(elapsed, 1),
        "rss_start_mb": round(rss_start["rss"] / 1024, 1),
        "rss_idle_mb": round(idle_mb, 1),
        "rss_during_mb": None if rss_during is None else round(rss_during, 1),
        "rss_after_mb": round(after["rss"] / 1024, 1),
        "peak_mb": round(after["peak"] / 1024, 1),
        "kb_per_stream": None if rss_during is None else round((rss_during - idle_mb) * 1024 / args.streams, 1),
        "kb_per_stream_from_peak": round((after["peak"] - idle["rss"]) / args.streams, 1),
        "plateau_samples": len(plateau),
        "plateau_cores": round(statistics.fmean(s["cores"] for s in plateau), 3) if plateau else None,
        "cpu_s": round(cpu, 2),
        "cpu_us_per_stream": round(cpu * 1e6 / args.streams, 1),
        "cpu_us_per_event": round(cpu * 1e6 / events, 1),
        "fake_cpu_s": round(fake_cpu, 2),
        "client_cpu_s": round(own, 2),
        "ttfb_p50_ms": _pct(tally.ttfb_ns, 0.5),
        "ttfb_p99_ms": _pct(tally.ttfb_ns, 0.99),
        "duration_p50_s": None if not tally.durations_ns else round(statistics.median(tally.durations_ns) / 1e9, 2),
        "warmup_errors": warm.errors,
        "error_samples": tally.error_samples + warm.error_samples,
    }
    return {"summary": summary, "samples": samples}


def _pct(values: list[int], q: float) -> float | None:
    found = percentile_ms(values, q)
    return None if found is None else round(found, 3)


def start(args: argparse.Namespace, tmp: Path, servers: list[Server]) -> tuple[str, dict[str, str], Server, Server]:
    py = sys.executable
    fake_port, port = free_port(), free_port()
    fake = Server("fake-upstream", [py, str(BENCH / "fake_upstream.py"), "--port", str(fake_port), "--deltas",
                                    str(args.deltas), "--delta-interval-ms", str(args.interval_ms)], tmp / "fake.log")
    servers.append(fake)
    fake.start()
    wait_tcp(fake, fake_port)
    config = tmp / "tollway.toml"
    write_tollway_config(config, tmp, port, fake_port)
    setup, why = create_tollway_key(tollway_candidates(REPO, py), config)
    if setup is None:
        raise RuntimeError(f"`keys create` failed:\n{why}")
    key = setup.api_key
    if args.key == "limited":
        done = subprocess.run([*setup.command, "keys", "create", "--config", str(config), "--name", "streams",
                               *LIMITED_KEY], env=setup.env, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`keys create` with limits failed: {done.stderr.strip()[-500:]}")
        key = done.stdout.strip().splitlines()[-1]
    gateway = Server("tollway", [*setup.command, "serve", "--config", str(config)], tmp / "tollway.log", setup.env)
    servers.append(gateway)
    gateway.start()
    wait_http_ok(gateway, f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}/v1/messages", client_headers(key), gateway, fake


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, raise_interrupt)
    # Each open stream is a socket here, two in Tollway (client and upstream) and one in the fake; the servers
    # inherit this limit.
    nofile = raise_nofile(max(65536, 3 * args.streams + 1024))
    if nofile < 2 * args.streams + 256:
        print(f"open-file limit {nofile} is too low for {args.streams} streams (Tollway needs two sockets a stream)",
              file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tollway-streams-"))
    servers: list[Server] = []
    keep = args.keep_tmp
    try:
        url, headers, gateway, fake = start(args, tmp, servers)
        print(f"cores={os.cpu_count()} nofile={nofile} streams={args.streams} deltas={args.deltas} "
              f"interval={args.interval_ms} ms ramp={args.ramp}/s key={args.key} tmp={tmp}", flush=True)
        result = uvloop.run(measure(url, headers, gateway, fake, args))
        s = result["summary"]
        print(f"\nstreams {s['streams']}: ok {s['ok']}, errors {s['errors']}, open at once {s['peak_open']}")
        print(f"Tollway RSS: idle {s['rss_idle_mb']} MB, all open {s['rss_during_mb']} MB, after "
              f"{s['rss_after_mb']} MB, peak {s['peak_mb']} MB -> {s['kb_per_stream']} KB per open stream "
              f"({s['kb_per_stream_from_peak']} KB from the peak)")
        print(f"Tollway CPU: {s['cpu_s']} s, {s['cpu_us_per_stream']} us/stream, {s['cpu_us_per_event']} us/event, "
              f"{s['plateau_cores']} cores busy while all were open; fake {s['fake_cpu_s']} s, client "
              f"{s['client_cpu_s']} s")
        for sample in s["error_samples"]:
            print(f"  error: {sample}")
        meta = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": git_commit(REPO),
                "src_uncommitted_changes": git_dirty(REPO),
                "python": platform.python_version(), "cores": os.cpu_count(), "clk_tck": CLK_TCK, "nofile": nofile,
                "loadavg_at_end": os.getloadavg(), "args": vars(args)}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_bytes(orjson.dumps({"meta": meta, **result}, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
        failed = s["errors"] or s["warmup_errors"] or s["peak_open"] < args.streams
        keep = keep or bool(failed)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"streams bench failed: {exc}", file=sys.stderr)
        keep = True
        return 2
    finally:
        for server in reversed(servers):
            server.stop()
        if keep:
            print(f"logs and configs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
