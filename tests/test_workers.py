"""``tollway serve --workers N`` as real processes: the port shared, limits and balances global across the
workers through Redis, a worker that dies started again, and SIGTERM draining every worker."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Upstream
from tests.test_server import TOLLWAY, clean_env, free_port, wait_healthy

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def write_config(tmp_path: Path, upstream: Upstream, redis: tuple[str, str] | None,
                 workers: int) -> tuple[Path, Path, int]:
    port, db, config = free_port(), tmp_path / "w.db", tmp_path / "tollway.toml"
    limits = "" if redis is None else f'[limits]\nurl = "{redis[0]}"\nprefix = "{redis[1]}"\n'
    config.write_text(f"""
[server]
port = {port}
workers = {workers}
[storage]
url = "sqlite:///{db}"
flush_interval = 0.1
{limits}
[[upstreams]]
name = "fake"
kind = "anthropic"
base_url = "{upstream.url}"
api_keys = ["k"]
[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "fake" }}]
""", encoding="utf-8")
    return config, db, port


def cli(config: Path, *args: str) -> str:
    done = subprocess.run([*TOLLWAY, *args[:2], "--config", str(config), *args[2:]], env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def fresh(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own, so the kernel picks a worker for each."""
    with httpx.Client(timeout=30) as client:
        return client.request(method, url, **kwargs)  # type: ignore[arg-type]


def test_workers_share_the_port_and_one_key_s_limits_then_drain_on_sigterm(
        tmp_path: Path, upstream: Upstream, redis_url: str, redis_prefix: str) -> None:
    config, db, port = write_config(tmp_path, upstream, (redis_url, redis_prefix), workers=2)
    limited = cli(config, "keys", "create", "--name", "limited", "--rpm", "6")
    paid = cli(config, "keys", "create", "--name", "paid", "--budget-usd", "1")
    proc = subprocess.Popen([*TOLLWAY, "serve", "--config", str(config)], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        deadline = time.monotonic() + 20
        workers: set[int] = set()
        while len(workers) < 2:  # both workers answer on the one port
            assert time.monotonic() < deadline, f"only workers {workers} answered"
            workers.add(fresh("GET", f"{url}/healthz").json()["worker"])
        statuses = [fresh("POST", f"{url}/v1/messages", json=BODY, headers={"x-api-key": limited}).status_code
                    for _ in range(12)]
        assert statuses.count(200) == 6 and statuses.count(429) == 6  # one limit for both workers, not one each
        for _ in range(6):
            assert fresh("POST", f"{url}/v1/messages", json=BODY, headers={"x-api-key": paid}).status_code == 200

        # Whichever worker a scrape reaches, /metrics holds both workers' figures, each labelled with its worker
        # (the other's as it wrote them, up to a second ago).
        deadline = time.monotonic() + 20
        while sum((counts := requests_by_worker(fresh("GET", f"{url}/metrics").text)).values()) != 18:
            assert time.monotonic() < deadline, f"/metrics never showed the 18 requests: {counts}"
            time.sleep(0.2)
        time.sleep(1.5)
        for _ in range(10):  # fresh connections: the kernel spreads them over both workers
            counts = requests_by_worker(fresh("GET", f"{url}/metrics").text)
            assert set(counts) == {"0", "1"} and sum(counts.values()) == 18, counts

        time.sleep(0.5)  # past a flush: a SIGKILL loses only rows younger than flush_interval
        victim = next(iter(workers))  # a worker that dies is started again
        subprocess.run(["kill", "-9", str(victim)], check=True)
        while True:
            assert time.monotonic() < deadline + 20, "the killed worker was not replaced"
            seen = {fresh("GET", f"{url}/healthz").json()["worker"] for _ in range(8)}
            if len(seen - {victim}) == 2:
                break
            time.sleep(0.2)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "workers:  2 processes on one port" in out
    assert "exited with -9; starting it again" in err
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status FROM usage").fetchall()
        ledger = conn.execute("SELECT sum(amount_nanousd) FROM ledger").fetchone()[0]
    assert sorted(r[0] for r in rows) == [200] * 12 + [429] * 6  # every request's row, each once
    assert 0 < ledger < 1_000_000_000  # the prepaid key paid for its six, from one balance


def test_workers_drain_and_exit_when_their_parent_is_killed(tmp_path: Path, upstream: Upstream, redis_url: str,
                                                             redis_prefix: str) -> None:
    config, db, port = write_config(tmp_path, upstream, (redis_url, redis_prefix), workers=2)
    key = cli(config, "keys", "create", "--name", "k")
    proc = subprocess.Popen([*TOLLWAY, "serve", "--config", str(config)], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    workers: set[int] = set()
    try:
        wait_healthy(url, proc)
        deadline = time.monotonic() + 20
        while len(workers) < 2:
            assert time.monotonic() < deadline, f"only workers {workers} answered"
            workers.add(fresh("GET", f"{url}/healthz").json()["worker"])
        for _ in range(4):
            assert fresh("POST", f"{url}/v1/messages", json=BODY, headers={"x-api-key": key}).status_code == 200
        proc.kill()  # the parent only: nothing passes a SIGTERM on
        proc.wait(10)
        deadline = time.monotonic() + 20
        while alive := {pid for pid in workers if _running(pid)}:
            assert time.monotonic() < deadline, f"workers {alive} outlived their parent"
            time.sleep(0.1)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with sqlite3.connect(db) as conn:  # drained as on a SIGTERM: every request's row written
        assert conn.execute("SELECT count(*) FROM usage WHERE status = 200").fetchone()[0] == 4


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A worker that has exited but not been reaped (its parent is gone: init reaps it) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def requests_by_worker(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tollway_requests_total":
                worker = sample.labels["worker"]
                counts[worker] = counts.get(worker, 0) + sample.value
    return counts


def test_several_workers_without_redis_are_refused_at_start(tmp_path: Path, upstream: Upstream) -> None:
    config, _, _ = write_config(tmp_path, upstream, None, workers=1)
    done = subprocess.run([*TOLLWAY, "serve", "--config", str(config), "--workers", "3"], env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "server.workers: 3 processes need [limits] url (Redis)" in done.stderr
