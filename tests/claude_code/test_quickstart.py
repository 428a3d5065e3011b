"""The README's first command, then the Claude Code line its banner prints, pasted as it is: the real CLI gets an
answer from the built-in mock on the first try, with no ``--model`` of its own."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

from tests.claude_code.client import run_claude
from tests.test_server import TOLLWAY, clean_env, free_port, wait_healthy


def banner_line(proc: subprocess.Popen[str], start: str, timeout: float = 30) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip().startswith(start):
            return line.strip()
        assert line or proc.poll() is None, "tollway serve exited before printing its banner"
    raise AssertionError(f"no {start!r} line in the banner")


def test_the_banner_s_claude_code_line_works_as_printed(claude_bin: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([*TOLLWAY, "serve", "--port", str(port)], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        words = shlex.split(banner_line(proc, "Claude Code:").removeprefix("Claude Code:"))
        assert words[-1] == "claude"
        env = dict(word.split("=", 1) for word in words[:-1])
        assert set(env) == {"ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL"}
        wait_healthy(env["ANTHROPIC_BASE_URL"], proc)
        result = run_claude(env["ANTHROPIC_BASE_URL"], env["ANTHROPIC_API_KEY"], "Say hello.", tmp_path, model=None,
                            max_turns=2, extra_env={"ANTHROPIC_MODEL": env["ANTHROPIC_MODEL"]}, claude=claude_bin)
        assert result["is_error"] is False, result
        assert "mock" in result["result"].lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            proc.kill()
