"""Instructions per request through the bare relay, counted the way `instructions.py` counts Tollway's.

Issue 7 compares Tollway's CPU per request with the bare relay's; on a shared machine that ratio moves by a
quarter between runs. Callgrind's instruction count does not, so this gives the relay's side of the same
comparison: the relay (`bare_relay.py`) under ``valgrind --tool=callgrind``, instrumentation on once it
listens, one cell's worth of requests unmeasured, then per cell a warm-up, counters zeroed, the measured
requests, a dump.

    .venv/bin/python bench/relay_instructions.py                 # 300 requests per cell, c=1 and c=8
    .venv/bin/python bench/relay_instructions.py --requests 100 --concurrency 1
    .venv/bin/python bench/relay_instructions.py --client tollway   # the relay on Tollway's own transport

Writes ``relay`` (``relay-tollway-client`` with ``--client tollway``) in results/instructions.json (next to
Tollway's runs) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from instructions import MODES, RESULTS, Counter
from loadgen import ANTHROPIC, client_headers, new_session, run_load
from procs import Server, free_port, git_commit, wait_tcp

BENCH = Path(__file__).resolve().parent


async def measure(url: str, counter: Counter, args: argparse.Namespace) -> dict[str, int]:
    headers = client_headers("bench")
    out: dict[str, list[int]] = {}
    counter.begin()
    async with new_session(max(args.concurrency) * 2) as session:
        await run_load(session, url, headers, ANTHROPIC, False, max(args.concurrency), args.requests, 3600)
        for _ in range(args.rounds):
            for mode in MODES:
                for c in args.concurrency:
                    stream = mode == "stream"
                    await run_load(session, url, headers, ANTHROPIC, stream, c, args.warmup, 3600)
                    counter.zero()
                    res = await run_load(session, url, headers, ANTHROPIC, stream, c, args.requests, 3600)
                    _, total = counter.dump(f"relay-{mode}-c{c}")
                    if res.errors:
                        raise RuntimeError(f"{res.errors} errors in {mode} c={c}: {res.error_samples}")
                    out.setdefault(f"{mode} c={c}", []).append(round(total / res.ok))
                    print(f"  relay {mode} c={c}: {out[f'{mode} c={c}'][-1]:,} instr/req", flush=True)
    return {cell: round(statistics.median(values)) for cell, values in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--client", choices=("aiohttp", "tollway"), default="aiohttp",
                        help="the relay's upstream client (see bare_relay.py)")
    args = parser.parse_args()
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    tmp = Path(tempfile.mkdtemp(prefix="relay-instructions-"))
    servers: list[Server] = []
    py = sys.executable
    try:
        fake_port, port = free_port(), free_port()
        counter = Counter(tmp)
        relay_argv = [py, str(BENCH / "bare_relay.py"), "--port", str(port), "--upstream", f"http://127.0.0.1:{fake_port}",
                      "--client", args.client]
        for server, listen in (
            (Server("fake-upstream", [py, str(BENCH / "fake_upstream.py"), "--port", str(fake_port)],
                    tmp / "fake.log"), fake_port),
            (Server("bare-relay", counter.wrap(relay_argv), tmp / "relay.log"), port),
        ):
            servers.append(server)
            server.start()
            wait_tcp(server, listen, timeout=600)
        counter.pid = servers[-1].pid
        summary = asyncio.run(measure(f"http://127.0.0.1:{port}/v1/messages", counter, args))
        doc: dict[str, Any] = orjson.loads(RESULTS.read_bytes()) if RESULTS.exists() else {}
        label = "relay" if args.client == "aiohttp" else f"relay-{args.client}-client"
        doc[label] = {"meta": {"commit": git_commit(BENCH.parent), "requests": args.requests,
                               "warmup": args.warmup, "rounds": args.rounds, "client": args.client,
                               "measure": "callgrind Ir (instructions executed) of bare_relay.py"},
                      "summary": summary}
        RESULTS.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print("\n| mode | relay instr/req |\n|---|--:|")
        for cell, value in summary.items():
            print(f"| {cell} | {value:,} |")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for server in reversed(servers):
            server.stop(grace=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
