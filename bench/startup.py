"""Startup time: from spawning `tollway serve` to the first /v1/messages request answered 200.

    .venv/bin/python bench/startup.py               # 7 runs on a database that exists, 3 on a fresh one
    .venv/bin/python bench/startup.py --runs 15
    .venv/bin/python bench/startup.py --litellm     # also LiteLLM's proxy (3 runs; see bench/litellm_proxy.py)

The clock starts just before the process is spawned (`.venv/bin/tollway serve --config <tmp>/tollway.toml`, as
an operator would start it) and stops when a non-streamed request for `claude-sonnet-4-6`, relayed to the fast
fake upstream, has been answered 200. Until then the harness tries every 2 ms (a refused connection costs
microseconds). Between runs Tollway is stopped with SIGTERM and waited for. Two marks on the way: `banner`,
when the log first holds the startup banner (imports done, database opened and checked, printed just before
the server starts), and `listening`, when the port first accepts a connection.

- `existing database`: the SQLite file and a key were made beforehand by `tollway keys create` (the usual
  restart).
- `fresh database`: a new, empty SQLite file each run: serve migrates it and makes the first key, which it
  prints in its banner; the harness reads the key from there, so the time includes the migration.

Tollway's own modules are byte-compiled before the first run (`compileall` on `src/`), as `pip install` does
when it installs a package: this environment sets PYTHONDONTWRITEBYTECODE=1, under which a start from a source
tree would otherwise compile every one of Tollway's modules again each time: a quarter of a start (callgrind,
start to first request served: 3.1 billion instructions without the bytecode, 2.3 billion with it).
`--no-compile` leaves the tree as it is.

Writes results/startup.json; its `summary` (the existing-database median) is what run.py's goal table reads.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from loadgen import ANTHROPIC, client_headers
from procs import (
    Server,
    create_tollway_key,
    free_port,
    git_commit,
    git_dirty,
    log_tail,
    tollway_candidates,
    wait_tcp,
    write_tollway_config,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "startup.json"
POLL = 0.002


def first_served(server: Server, url: str, headers: dict[str, str] | None, key_from_log: bool,
                 timeout: float, banner: str | None = "Tollway listening on") -> dict[str, float]:
    """Seconds from start() to the first 200 on url (`served`), to the banner in the log and to the port
    accepting. With key_from_log, the key is read from the banner."""
    t0 = time.perf_counter()
    server.start()
    deadline = t0 + timeout
    body = ANTHROPIC.bodies["non-stream"]
    port = int(url.split(":")[2].split("/")[0])
    marks: dict[str, float] = {}
    while time.perf_counter() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited during startup:\n{log_tail(server.log)}")
        if (banner and "banner" not in marks) or headers is None:
            text = server.log.read_text(errors="replace") if server.log.exists() else ""
            if banner and banner in text:
                marks.setdefault("banner", time.perf_counter() - t0)
            found = [w for w in text.split() if w.startswith("tw-")] if key_from_log else []
            if headers is None and found:
                headers = client_headers(found[0])
        if "listening" not in marks:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                marks["listening"] = time.perf_counter() - t0
            except OSError:
                time.sleep(POLL)
                continue
        if headers is not None:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=5.0) as resp:
                    if resp.status == 200:
                        marks["served"] = time.perf_counter() - t0
                        return marks
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise RuntimeError(f"{server.name}: HTTP {exc.code} {exc.read()[:200]!r}") from exc
            except OSError:
                pass
        time.sleep(POLL)
    raise RuntimeError(f"{server.name}: no 200 after {timeout:.0f} s:\n{log_tail(server.log)}")


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    times = [r["served"] for r in runs]
    found: dict[str, Any] = {"runs": len(times), "median_s": round(statistics.median(times), 3),
                             "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                             "all_s": [round(t, 3) for t in times]}
    for mark in ("banner", "listening"):
        seen = [r[mark] for r in runs if mark in r]
        if seen:
            found[f"{mark}_median_s"] = round(statistics.median(seen), 3)
    return found


def _line(what: str, marks: dict[str, float]) -> str:
    return f"  {what}: served {marks['served']:.3f} s (" + ", ".join(
        f"{k} {v:.3f} s" for k, v in marks.items() if k != "served") + ")"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="runs on an existing database (default 7)")
    parser.add_argument("--fresh-runs", type=int, default=3, help="runs on a fresh database (default 3)")
    parser.add_argument("--litellm", action="store_true", help="also time LiteLLM's proxy (3 runs)")
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="do not byte-compile src/ first")
    args = parser.parse_args()
    if not args.no_compile:
        # Written whatever PYTHONDONTWRITEBYTECODE says (py_compile ignores it), and read by the children.
        compileall.compile_dir(REPO / "src", quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="tollway-startup-"))
    servers: list[Server] = []
    py = sys.executable
    keep = args.keep_tmp
    try:
        fake_port = free_port()
        fake = Server("fake-upstream", [py, str(BENCH / "fake_upstream.py"), "--port", str(fake_port)],
                      tmp / "fake.log")
        servers.append(fake)
        fake.start()
        wait_tcp(fake, fake_port)
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/messages"
        config = tmp / "tollway.toml"
        write_tollway_config(config, tmp, port, fake_port)
        setup, why = create_tollway_key(tollway_candidates(REPO, py), config)
        if setup is None:
            raise RuntimeError(f"`keys create` failed:\n{why}")
        argv = [*setup.command, "serve", "--config", str(config)]
        results: dict[str, Any] = {"command": argv}
        times: list[dict[str, float]] = []
        for i in range(args.runs):
            server = Server("tollway", argv, tmp / f"tollway-{i}.log", setup.env)
            servers.append(server)
            times.append(first_served(server, url, client_headers(setup.api_key), False, 60.0))
            server.stop()
            print(_line(f"existing database, run {i + 1}", times[-1]), flush=True)
        results["existing_database"] = summary(times)
        fresh: list[dict[str, float]] = []
        for i in range(args.fresh_runs):
            run_dir = tmp / f"fresh-{i}"
            run_dir.mkdir()
            fresh_config = run_dir / "tollway.toml"
            write_tollway_config(fresh_config, run_dir, port, fake_port)
            server = Server("tollway", [*setup.command, "serve", "--config", str(fresh_config)],
                            run_dir / "tollway.log", setup.env)
            servers.append(server)
            fresh.append(first_served(server, url, None, True, 60.0))
            server.stop()
            print(_line(f"fresh database, run {i + 1}", fresh[-1]), flush=True)
        if fresh:
            results["fresh_database"] = summary(fresh)
        if args.litellm:
            import litellm_proxy

            launcher, why = litellm_proxy.ensure_venv()
            if launcher is None:
                results["litellm_skipped"] = why
                print(f"litellm skipped: {why}", file=sys.stderr)
            else:
                config_ll = tmp / "litellm.yaml"
                litellm_proxy.write_config(config_ll, fake_port)
                lite: list[dict[str, float]] = []
                for i in range(3):
                    server = Server("litellm", litellm_proxy.command(launcher, config_ll, port),
                                    tmp / f"litellm-{i}.log", litellm_proxy.environment())
                    servers.append(server)
                    lite.append(first_served(server, url, client_headers(litellm_proxy.MASTER_KEY), False, 180.0,
                                             banner=None))
                    server.stop()
                    print(_line(f"litellm, run {i + 1}", lite[-1]), flush=True)
                results["litellm"] = {**summary(lite), "version": litellm_proxy.version()}
        meta = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": git_commit(REPO),
                "src_uncommitted_changes": git_dirty(REPO),
                "python": platform.python_version(), "cores": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
                "bytecode": "as found" if args.no_compile else "src/ byte-compiled before the runs",
                "args": vars(args)}
        doc = {"meta": meta, "summary": results["existing_database"], **results}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        e = results["existing_database"]
        print(f"\nstartup to first request served: median {e['median_s']} s (min {e['min_s']}, max {e['max_s']}, "
              f"{e['runs']} runs, existing database; banner at {e.get('banner_median_s')} s, listening at "
              f"{e.get('listening_median_s')} s)")
        if "fresh_database" in results:
            f = results["fresh_database"]
            print(f"fresh database (migrated, first key made): median {f['median_s']} s over {f['runs']} runs")
        if "litellm" in results:
            print(f"LiteLLM {results['litellm']['version']}: median {results['litellm']['median_s']} s")
        print(f"wrote {RESULTS.relative_to(REPO)}")
        return 0
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"startup bench failed: {exc}", file=sys.stderr)
        keep = True
        return 2
    finally:
        for server in reversed(servers):
            server.stop()
        if keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
