"""Instructions per request through Tollway, counted by callgrind: a plain key against the limited key.

`run.py` compares the rows ``tollway`` and ``tollway-limited`` by CPU time, which on a shared 2-core machine
moves by a quarter between rounds. Here the same gateway (the same config and keys) runs under
``valgrind --tool=callgrind``, which counts the instructions the process executes: a count that does not
depend on what else the machine is doing.

    .venv/bin/python bench/instructions.py                      # 300 requests per cell, c=1 and c=8
    .venv/bin/python bench/instructions.py --requests 100 --concurrency 1 --modes non-stream   # quick look
    .venv/bin/python bench/instructions.py --keys plain,limited,rates,money   # limits and money apart
    .venv/bin/python bench/instructions.py --cprofile           # the same cells under cProfile, by Python function

How a cell is measured: callgrind starts with instrumentation off (startup runs at near-native speed and is
not counted), `callgrind_control -i on` turns it on once the gateway answers; each key then sends one cell's
worth of requests unmeasured (see `measure` for why), then per cell: a warm-up,
wait until the usage ledger has written every row (``/healthz`` says ``usage_pending: 0``), zero the
counters, the measured requests, wait for the ledger again, dump. So a cell counts its requests and the
writing of their usage rows and ledger entries, nothing before and nothing after.

Python runs about 50 times slower under callgrind, so the gateway's timers would fire 50 times as often per
request as in a real run. The config is run.py's except for two timers: the ledger's flush interval is
stretched by ``--timer-scale`` (so a batch holds about as many rows as it would at full speed), and the key
and funds reloads (about 0.1 % of a request at full speed) are pushed past the end of the run, since one
landing in one cell and not in another would be noise. ``PYTHONHASHSEED`` is fixed for the same reason.

Writes bench/results/instructions.json (under ``--label``, so a "before" and an "after" can sit side by side)
and prints a markdown table, then the functions whose cost differs most between the plain and the limited
key (callgrind_annotate, self and inclusive, per request). Python code shows there as CPython internals:
``--cprofile`` runs the same cells with the gateway under cProfile and prints the difference by Python
function instead (call counts exact, times as noisy as any timing here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pstats
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from loadgen import ANTHROPIC, OPENAI_CLIENT_MODEL, OPENAI_UPSTREAM_MODEL, client_headers, new_session, run_load
from procs import (
    LIMITED_KEY,
    Server,
    create_tollway_key,
    free_port,
    git_commit,
    raise_interrupt,
    tollway_candidates,
    wait_http_ok,
    wait_tcp,
    write_tollway_config,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "instructions.json"
MODES = ("non-stream", "stream")
_RATE_FLAGS = {"--rpm", "--itpm", "--otpm", "--max-concurrency"}
_PAIRS = list(zip(LIMITED_KEY[::2], LIMITED_KEY[1::2], strict=True))
# The limited key of run.py, and its two halves to tell rate limits from money.
KEY_FLAGS: dict[str, list[str]] = {
    "plain": [],
    "limited": LIMITED_KEY,
    "rates": [part for pair in _PAIRS if pair[0] in _RATE_FLAGS for part in pair],
    "money": [part for pair in _PAIRS if pair[0] not in _RATE_FLAGS for part in pair],
}
FLUSH_INTERVAL = 0.5
"""The ledger's default flush interval, which --timer-scale stretches."""
NO_RELOAD = 86_400.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per cell (default 300)")
    parser.add_argument("--warmup", type=int, default=40, help="unmeasured requests before each cell (default 40)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    parser.add_argument("--modes", default=",".join(MODES), help="non-stream, stream or both")
    parser.add_argument("--keys", default="plain,limited", help=f"which keys, of {','.join(KEY_FLAGS)}; "
                        "the first is the baseline of the ratios (default plain,limited)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every cell this many times (default 1)")
    parser.add_argument("--timer-scale", type=float, default=40.0,
                        help="how much longer the ledger waits between writes than its default 0.5 s (default 40)")
    parser.add_argument("--top", type=int, default=20, help="functions listed per difference table (default 20)")
    parser.add_argument("--label", default="latest", help="name of this run in instructions.json (default latest)")
    parser.add_argument("--cprofile", action="store_true", help="profile by Python function instead of callgrind")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, dumps)")
    parser.add_argument("--serve-profiled", metavar="DIR", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve_profiled is not None:
        args.tollway_argv = rest
        return args
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    args.modes = [m for m in MODES if m in {s.strip() for s in args.modes.split(",")}]
    args.keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if (not args.concurrency or min(args.concurrency) < 1 or not args.modes or len(args.keys) < 1
            or any(k not in KEY_FLAGS for k in args.keys)):
        parser.error("need concurrency >= 1, a known mode and known keys")
    return args


# -- what counts -----------------------------------------------------------------------------------------


class Counter:
    """Callgrind in the gateway process: counters zeroed before a cell and dumped after it."""

    unit = "instr/req"

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "callgrind"
        self.dir.mkdir()
        self.pid = 0

    def wrap(self, argv: list[str]) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={self.dir}/callgrind.out", *argv]

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True, capture_output=True, timeout=120)

    def begin(self) -> None:
        self._control("-i", "on")

    def zero(self) -> None:
        self._control("-z")

    def dump(self, name: str) -> tuple[Path, int]:
        """The dump of the counts since the last zero, and its total."""
        before = set(self.dir.iterdir())
        self._control("-d", name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in set(self.dir.iterdir()) - before:
                match = re.search(rb"^(?:summary|totals): (\d+)", path.read_bytes(), re.MULTILINE)
                if match:
                    return path, int(match.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"callgrind wrote no dump for {name}")


class Profiler:
    """cProfile in the gateway process (this file's --serve-profiled), started and dumped by signals."""

    unit = "profiled ns/req"

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "cprofile"
        self.dir.mkdir()
        self.pid = 0
        self.count = 0

    def wrap(self, argv: list[str]) -> list[str]:
        # argv is [python, -m, tollway, ...]: the same interpreter runs this file, which runs tollway.
        return [argv[0], str(Path(__file__).resolve()), "--serve-profiled", str(self.dir), *argv[3:]]

    def begin(self) -> None:
        pass

    def zero(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def dump(self, name: str) -> tuple[Path, int]:
        self.count += 1
        path = self.dir / f"{self.count}.prof"
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no profile for {name}")
            time.sleep(0.1)
        final = path.rename(self.dir / f"{name}.prof")
        # The profile's own time, in nanoseconds: noisy, but it keeps the table's columns filled.
        return final, round(pstats.Stats(str(final)).total_tt * 1e9)  # type: ignore[attr-defined]


def serve_profiled(out_dir: str, argv: list[str]) -> None:
    """Tollway with a profiler switched on by SIGUSR1 and written out (to the next numbered file) by SIGUSR2."""
    import cProfile
    import runpy

    profile: list[cProfile.Profile] = []
    written = 0

    def start(signum: int, frame: object) -> None:
        profile[:] = [cProfile.Profile()]
        profile[0].enable()

    def stop(signum: int, frame: object) -> None:
        nonlocal written
        profile[0].disable()
        written += 1
        # Renamed into place so the harness never reads half a file.
        partial = Path(out_dir, f"{written}.partial")
        profile[0].dump_stats(partial)
        partial.rename(Path(out_dir, f"{written}.prof"))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["tollway", *argv]
    runpy.run_module("tollway", run_name="__main__")


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    server: Server
    url: str
    keys: dict[str, dict[str, str]]
    """Key name to the client's headers."""
    database: Path


def start(args: argparse.Namespace, tmp: Path, servers: list[Server], counter: Counter | Profiler) -> Gateway:
    py = sys.executable
    fake_port = free_port()
    fake = Server("fake-upstream", [py, str(BENCH / "fake_upstream.py"), "--port", str(fake_port)], tmp / "fake.log")
    servers.append(fake)
    fake.start()
    wait_tcp(fake, fake_port)
    port = free_port()
    config = tmp / "tollway.toml"
    write_tollway_config(config, tmp, port, fake_port, (OPENAI_CLIENT_MODEL, OPENAI_UPSTREAM_MODEL))
    text = config.read_text()
    timers = (f"[storage]\nflush_interval = {FLUSH_INTERVAL * args.timer_scale}\n"
              f"key_refresh_interval = {NO_RELOAD}\n")
    if "[storage]\n" not in text:
        raise RuntimeError("procs.write_tollway_config has no [storage] table to set the timers in")
    config.write_text(text.replace("[storage]\n", timers, 1))
    # The module form, with src on the path: valgrind needs the interpreter itself as the program.
    command, env = tollway_candidates(REPO, py)[-1]
    setup, why = create_tollway_key([(command, env)], config)
    if setup is None:
        raise RuntimeError(f"`keys create` failed:\n{why}")
    keys = {"plain": client_headers(setup.api_key)}
    for name in args.keys:
        if name == "plain":
            continue
        done = subprocess.run([*command, "keys", "create", "--config", str(config), "--name", f"bench-{name}",
                               *KEY_FLAGS[name]], env=env, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`keys create` for {name} failed: {done.stderr.strip()[-500:]}")
        keys[name] = client_headers(done.stdout.strip().splitlines()[-1])
    gateway = Server("tollway", counter.wrap([*command, "serve", "--config", str(config)]), tmp / "tollway.log",
                     dict(env, PYTHONHASHSEED="0"))
    servers.append(gateway)
    gateway.start()
    counter.pid = gateway.pid
    # Startup runs uninstrumented under callgrind, yet at several times its usual time.
    wait_http_ok(gateway, f"http://127.0.0.1:{port}/healthz", timeout=600)
    return Gateway(gateway, f"http://127.0.0.1:{port}", keys, tmp / "tollway.db")


async def written(database: Path, rows: int, limit: float) -> None:
    """Until the ledger has committed ``rows`` usage rows (with their ledger entries, in the same transaction).
    Read from the database file, not asked of the gateway: ``/healthz`` says nothing is pending as soon as a
    batch is taken, before it is written, and asking would itself be counted."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
            found = db.execute("SELECT count(*) FROM usage").fetchone()[0]
        if found >= rows:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{rows} usage rows not written after {limit:.0f}s")


async def measure(args: argparse.Namespace, gateway: Gateway, counter: Counter | Profiler) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    flush_wait = FLUSH_INTERVAL * args.timer_scale * 3 + 30
    url = f"{gateway.url}/v1/messages"
    rows = 0
    """Requests sent so far: each leaves one usage row."""
    counter.begin()
    async with new_session(max(args.concurrency) * 2) as session:
        # Each key once through a cell's worth of requests first: the ledger's first batch of a new size
        # prepares a new SQLite statement (millions of instructions), which would otherwise land in whichever
        # cell first writes that many rows or entries, and in no later one.
        for key in args.keys:
            primed = await run_load(session, url, gateway.keys[key], ANTHROPIC, False, max(args.concurrency),
                                    args.requests, 3600)
            rows += primed.ok + primed.errors
            await written(gateway.database, rows, flush_wait)
        for round_ in range(args.rounds):
            for mode in args.modes:
                stream = mode == "stream"
                for c in args.concurrency:
                    # Keys take turns within a (mode, c), so the cells being compared run back to back.
                    for key in args.keys:
                        headers = gateway.keys[key]
                        warm = await run_load(session, url, headers, ANTHROPIC, stream, c, args.warmup, 3600)
                        rows += warm.ok + warm.errors
                        await written(gateway.database, rows, flush_wait)
                        counter.zero()
                        started = time.monotonic()
                        res = await run_load(session, url, headers, ANTHROPIC, stream, c, args.requests, 3600)
                        rows += res.ok + res.errors
                        await written(gateway.database, rows, flush_wait)
                        name = f"{key}-{mode}-c{c}-r{round_}"
                        dump, total = counter.dump(name)
                        done = res.ok + res.errors
                        cell = {"key": key, "mode": mode, "concurrency": c, "round": round_, "requests": done,
                                "errors": res.errors + warm.errors, "seconds": round(time.monotonic() - started, 1),
                                "instructions": total, "per_request": round(total / done) if done else None,
                                "dump": str(dump), "error_samples": res.error_samples + warm.error_samples}
                        cells.append(cell)
                        print(f"  {name:28} {cell['per_request'] or 0:>12,} {counter.unit}  {cell['seconds']:>6} s  "
                              f"errors {cell['errors']}", flush=True)
    return cells


# -- the report ------------------------------------------------------------------------------------------


def summarise(cells: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per (mode, c): each key's median instructions per request, and each ÷ the first key's."""
    out: dict[str, dict[str, Any]] = {}
    for cell in cells:
        row = out.setdefault(f"{cell['mode']} c={cell['concurrency']}", {})
        row.setdefault(cell["key"], []).append(cell["per_request"])
    for row in out.values():
        for key in keys:
            values = row[key]
            row[key] = round(statistics.median(values))
            row[f"{key}_rounds"] = values
        for key in keys[1:]:
            row[f"{key}/{keys[0]}"] = round(row[key] / row[keys[0]], 3)
            row[f"{key}-{keys[0]}"] = row[key] - row[keys[0]]
    return out


def markdown(summary: dict[str, dict[str, Any]], keys: Sequence[str], unit: str) -> str:
    base = keys[0]
    head = ["mode", *(f"{k} {unit}" for k in keys), *(f"{k} - {base}" for k in keys[1:]),
            *(f"{k} ÷ {base}" for k in keys[1:])]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for mode, row in summary.items():
        values = [f"{row[k]:,}" for k in keys] + [f"{row[f'{k}-{base}']:+,}" for k in keys[1:]]
        values += [f"{row[f'{k}/{base}']:.3f}" for k in keys[1:]]
        lines.append(f"| {mode} | " + " | ".join(values) + " |")
    return "\n".join(lines)


_ANNOTATED = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.+?)\s*$")


def annotate(dump: str, inclusive: bool) -> dict[str, int]:
    """Each function's instructions in a dump, by ``file:function`` (the file without its directory)."""
    done = subprocess.run(["callgrind_annotate", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}",
                           dump], capture_output=True, text=True, check=True, timeout=600)
    costs: dict[str, int] = {}
    for line in done.stdout.splitlines():
        match = _ANNOTATED.match(line)
        if match is None or match.group(2) == "PROGRAM TOTALS":
            continue
        where = match.group(2).split(" [", 1)[0]
        file, _, function = where.rpartition(":")
        name = f"{Path(file).name}:{function}" if file else where
        costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def python_costs(dump: str) -> dict[str, dict[str, int]]:
    """Per measure (calls, own and cumulative nanoseconds), each Python function's figure in a cProfile dump."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = pstats.Stats(
        dump).stats  # type: ignore[attr-defined]
    out: dict[str, dict[str, int]] = {"calls": {}, "tottime_ns": {}, "cumtime_ns": {}}
    for (file, line, name), (_, calls, own, cumulative, _) in stats.items():
        where = f"{'/'.join(Path(file).parts[-2:])}:{line}({name})"
        out["calls"][where] = calls
        out["tottime_ns"][where] = round(own * 1e9)
        out["cumtime_ns"][where] = round(cumulative * 1e9)
    return out


Diffs = dict[str, list[tuple[str, float, float, float]]]


def differences(cells: list[dict[str, Any]], keys: Sequence[str], top: int, profiled: bool) -> Diffs:
    """Per (mode, c) of the last round and per measure, the functions whose cost per request grew most from
    the first key to each other one: (function, the first key's, the other's, the difference)."""
    last = max(c["round"] for c in cells)
    by_cell = {(c["mode"], c["concurrency"], c["key"]): c for c in cells if c["round"] == last}
    loaded: dict[str, dict[str, dict[str, int]]] = {}

    def costs(cell: dict[str, Any]) -> dict[str, dict[str, int]]:
        dump = cell["dump"]
        if dump not in loaded:
            loaded[dump] = python_costs(dump) if profiled else {
                "self": annotate(dump, False), "inclusive": annotate(dump, True)}
        return loaded[dump]

    out: Diffs = {}
    for (mode, c, key), cell in by_cell.items():
        if key == keys[0]:
            continue
        base = by_cell[mode, c, keys[0]]
        for measure, before in costs(base).items():
            after = costs(cell)[measure]
            whole = cell["per_request"] - base["per_request"]
            rows = []
            for name in before.keys() | after.keys():
                b, a = before.get(name, 0) / base["requests"], after.get(name, 0) / cell["requests"]
                # Inclusive costs of the frames that hold the whole request (the event loop, the eval loop,
                # a recursion callgrind marks with ') grow by about the whole difference: they say nothing
                # about where it is.
                if measure == "inclusive" and ("'" in name or a - b > whole / 2):
                    continue
                rows.append((name, round(b, 2), round(a, 2), round(a - b, 2)))
            rows.sort(key=lambda r: -r[3])
            out[f"{key} vs {keys[0]}, {mode} c={c}, {measure}"] = rows[:top]
    return out


def print_differences(diffs: Diffs, keys: Sequence[str]) -> None:
    for title, rows in diffs.items():
        print(f"\n{title} (per request)\n")
        print(f"| function | {keys[0]} | other | difference |\n|---|--:|--:|--:|")
        for name, b, a, d in rows:
            print(f"| `{name}` | {b:,.1f} | {a:,.1f} | {d:+,.1f} |")


def save(args: argparse.Namespace, cells: list[dict[str, Any]], summary: dict[str, Any], diffs: Diffs) -> None:
    doc: dict[str, Any] = orjson.loads(RESULTS.read_bytes()) if RESULTS.exists() else {}
    doc[args.label + (" (cprofile)" if args.cprofile else "")] = {
        "meta": {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(REPO),
                 "requests": args.requests, "warmup": args.warmup, "rounds": args.rounds,
                 "timer_scale": args.timer_scale, "keys": {k: KEY_FLAGS[k] for k in args.keys},
                 "measure": "cProfile" if args.cprofile else "callgrind Ir (instructions executed)"},
        "summary": summary,
        "cells": [{k: v for k, v in c.items() if k != "dump"} for c in cells],
        "differences": diffs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def main() -> int:
    args = parse_args()
    if args.serve_profiled is not None:
        serve_profiled(args.serve_profiled, args.tollway_argv)
        return 0
    if not args.cprofile and (shutil.which("valgrind") is None or shutil.which("callgrind_control") is None):
        print("valgrind (with callgrind_control) is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="tollway-instructions-"))
    servers: list[Server] = []
    keep = args.keep_tmp
    counter: Counter | Profiler = Profiler(tmp) if args.cprofile else Counter(tmp)
    try:
        gateway = start(args, tmp, servers, counter)
        print(f"gateway pid {gateway.server.pid} {'under cProfile' if args.cprofile else 'under callgrind'}, "
              f"tmp {tmp}", flush=True)
        cells = asyncio.run(measure(args, gateway, counter))
        summary = summarise(cells, args.keys)
        diffs = differences(cells, args.keys, args.top, args.cprofile)
        print("\n" + markdown(summary, args.keys, counter.unit))
        print_differences(diffs, args.keys)
        save(args, cells, summary, diffs)
        print(f"\nwrote {RESULTS.relative_to(REPO)} ({args.label})")
        return 1 if any(c["errors"] for c in cells) else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"failed: {exc!r}", file=sys.stderr)
        traceback.print_exc()
        keep = True
        return 2
    finally:
        for server in reversed(servers):
            server.stop(grace=60)
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
