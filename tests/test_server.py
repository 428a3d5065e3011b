"""``tollway serve`` as a real process: first start, banner, and a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Upstream

TOLLWAY = [sys.executable, "-m", "tollway"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"tollway exited early: {proc.communicate()}"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("tollway did not become healthy")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TOLLWAY_CONFIG")}
    return env | extra


def test_first_start_on_defaults_prints_a_working_key_and_curl(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([*TOLLWAY, "serve", "--port", str(port)], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "MOCK UPSTREAM" in out
    secret = next(word for line in out.splitlines() for word in line.split() if word.startswith("tw-"))
    curl = next(line for line in out.splitlines() if line.strip().startswith("curl "))
    assert secret in curl and f"{url}/v1/messages" in curl
    assert (tmp_path / "tollway.db").exists()

    # The printed key works after a restart, and no second key is made.
    proc = subprocess.Popen([*TOLLWAY, "serve", "--port", str(port)], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(url, proc)
        r = httpx.post(f"{url}/v1/messages", headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
                       json={"model": "claude-sonnet-4-6", "max_tokens": 256,
                             "messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == 200, r.text
        assert "mock" in r.json()["content"][0]["text"].lower()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert secret not in out and "Keys exist already" in out


def test_sigterm_drains_open_streams_and_flushes_usage(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    db = tmp_path / "t.db"
    config = tmp_path / "tollway.toml"
    config.write_text(f"""
[server]
port = {port}
[storage]
url = "sqlite:///{db}"
flush_interval = 30   # long: only the shutdown flush can have written the row
[[upstreams]]
name = "fake"
kind = "anthropic"
base_url = "{upstream.url}"
api_keys = ["${{FAKE_KEY}}"]
[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "fake" }}]
""")
    env = clean_env(FAKE_KEY="k")
    created = subprocess.run([*TOLLWAY, "keys", "create", "--config", str(config), "--name", "drain"], env=env,
                             capture_output=True, text=True, check=True)
    secret = created.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([*TOLLWAY, "serve", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    received: list[bytes] = []
    started = threading.Event()

    def stream() -> None:
        body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
                "messages": [{"role": "user", "content": "a slow answer please"}]}
        with httpx.stream("POST", f"{url}/v1/messages", json=body, timeout=30,
                          headers={"x-api-key": secret, "x-fake-scenario": "slow:100"}) as r:
            for chunk in r.iter_raw():
                received.append(chunk)
                started.set()

    try:
        wait_healthy(url, proc)
        client = threading.Thread(target=stream)
        client.start()
        assert started.wait(10)
        proc.send_signal(signal.SIGTERM)
        client.join(30)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    body = b"".join(received)
    assert body.rstrip().endswith(b'data: {"type":"message_stop"}'), body[-200:]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, error_type, input_tokens, output_tokens FROM usage").fetchall()
    assert rows == [(200, None, 31, 7)]


@pytest.mark.parametrize("problem", ["kind", "upstream"])
def test_bad_config_fails_at_startup_naming_file_and_key(tmp_path: Path, problem: str) -> None:
    config = tmp_path / "bad.toml"
    if problem == "kind":
        config.write_text('[[upstreams]]\nname = "x"\nkind = "grpc"\n')
        expected = "upstreams[0].kind"
    else:
        config.write_text('[[models]]\nname = "m"\ntargets = [{ upstream = "nowhere" }]\n')
        expected = "models[0].targets[0].upstream"
    r = subprocess.run([*TOLLWAY, "serve", "--config", str(config)], env=clean_env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert str(config) in r.stderr and expected in r.stderr
