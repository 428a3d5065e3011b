"""Run the real Claude Code CLI as a non-interactive, offline test client.

``scripts/install-claude-code.sh`` installs the pinned CLI under ``.cache/claude-code``;
these helpers find it, build an isolated environment for it and run one ``claude -p``
turn against a given base URL, returning the parsed ``--output-format json`` result.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CLAUDE_CODE_VERSION",
    "DEFAULT_MODEL",
    "ClaudeRunError",
    "ClaudeUnavailable",
    "claude_command",
    "claude_env",
    "find_claude",
    "probe_claude",
    "run_claude",
]

# Keep in sync with scripts/install-claude-code.sh. 2.1.197 is the last release whose
# package.json still declares Node >=18; later ones require Node 22, and this machine has 20.
CLAUDE_CODE_VERSION = "2.1.197"
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_TIMEOUT = 120.0

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_DIR = REPO_ROOT / ".cache" / "claude-code"
# Lets CI or a developer point at a CLI installed elsewhere without editing code.
BIN_ENV_VAR = "TOLLWAY_CLAUDE_BIN"

# Only these are inherited from the parent: anything else (notably ANTHROPIC_*, CLAUDE_*
# or proxy variables of whoever runs the tests) could redirect or authenticate the CLI
# behind the test's back.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class ClaudeUnavailable(RuntimeError):
    """The CLI is not installed or cannot start here; tests should skip, not fail."""


class ClaudeRunError(RuntimeError):
    """The CLI did not produce a JSON result (crash, timeout, unparsable output)."""

    def __init__(self, message: str, returncode: int | None, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        return (
            f"{self.args[0]} (returncode={self.returncode})\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def find_claude() -> Path:
    """Path of the ``claude`` executable, or raise ``ClaudeUnavailable`` saying how to get it."""
    override = os.environ.get(BIN_ENV_VAR)
    candidate = Path(override) if override else INSTALL_DIR / "node_modules" / ".bin" / "claude"
    if not candidate.exists():
        raise ClaudeUnavailable(
            f"Claude Code CLI not found at {candidate}; run scripts/install-claude-code.sh (or set {BIN_ENV_VAR})"
        )
    if not os.access(candidate, os.X_OK):
        raise ClaudeUnavailable(f"{candidate} is not executable")
    return candidate


def probe_claude(claude: Path | None = None, timeout: float = 30.0) -> str:
    """Return ``claude --version`` output, or raise ``ClaudeUnavailable`` if it cannot run."""
    claude = claude or find_claude()
    with tempfile.TemporaryDirectory(prefix="tollway-cc-probe-") as home:
        try:
            proc = subprocess.run(
                [str(claude), "--version"],
                env=claude_env("http://127.0.0.1:9", "probe", config_dir=home, home=home),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClaudeUnavailable(f"{claude} --version failed: {exc}") from exc
    if proc.returncode != 0:
        raise ClaudeUnavailable(f"{claude} --version exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def claude_env(
    base_url: str,
    api_key: str,
    *,
    config_dir: str,
    home: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment that keeps the CLI offline, non-interactive and isolated from the host."""
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            # Isolated HOME and config dir: no host settings, credentials or session history leak in,
            # and the CLI's writes (sessions, .claude.json) stay in the test's temp dir.
            "HOME": home,
            "CLAUDE_CONFIG_DIR": config_dir,
            "TERM": "dumb",
            # --permission-mode bypassPermissions is refused for root unless the CLI believes it is sandboxed.
            "IS_SANDBOX": "1",
            # No telemetry, error reporting, update checks or other calls to hosts we cannot reach.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
            # The CLI retries even 401s about 10 times with backoff, which turns any upstream
            # or gateway error into a silent two-minute hang; fail fast so the test shows it.
            "CLAUDE_CODE_MAX_RETRIES": "1",
            # Per-request limit (default 600 s) kept below the subprocess timeout, so a stalled
            # stream ends in a JSON error result rather than a killed process.
            "API_TIMEOUT_MS": "45000",
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": api_key,
        }
    )
    if extra:
        env.update(extra)
    return env


def claude_command(
    claude: Path,
    prompt: str,
    *,
    model: str | None = DEFAULT_MODEL,
    max_turns: int = 4,
    bare: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line; ``model`` None leaves the model to the CLI (its default, or ``ANTHROPIC_MODEL``)."""
    cmd = [
        str(claude),
        "-p",
        prompt,
        "--output-format",
        "json",
        "--permission-mode",
        "bypassPermissions",
        *(() if model is None else ("--model", model)),
        # Bounds the agent loop if an upstream (or a gateway bug) keeps asking for tools.
        "--max-turns",
        str(max_turns),
        "--no-session-persistence",
    ]
    if bare:
        # Skips hooks, plugins, CLAUDE.md discovery and background prefetches: smaller,
        # deterministic requests (3 tools instead of ~24) that do not depend on the host.
        cmd.append("--bare")
    cmd.extend(extra_args)
    return cmd


def _parse_result(returncode: int | None, stdout: str, stderr: str) -> dict[str, Any]:
    # With --output-format json the result is one JSON object; scan from the end in case
    # the CLI printed a warning line first.
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            if isinstance(result, dict):
                return result
    raise ClaudeRunError("claude produced no JSON result", returncode, stdout, stderr)


def _kill_group(pid: int) -> None:
    # The CLI spawns shells for the Bash tool; kill the whole session so nothing outlives the test.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_claude(
    base_url: str,
    api_key: str,
    prompt: str,
    cwd: str | os.PathLike[str],
    *,
    model: str | None = DEFAULT_MODEL,
    max_turns: int = 4,
    bare: bool = True,
    time_limit: float = DEFAULT_TIMEOUT,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    claude: Path | None = None,
) -> dict[str, Any]:
    """Run one ``claude -p`` turn against ``base_url`` and return its JSON result.

    Blocking: the gateway under test must serve from another thread or process.
    A result with ``is_error: true`` is returned, not raised; only a missing JSON result
    (crash, timeout) raises ``ClaudeRunError``.
    """
    claude = claude or find_claude()
    cmd = claude_command(claude, prompt, model=model, max_turns=max_turns, bare=bare, extra_args=extra_args)
    with tempfile.TemporaryDirectory(prefix="tollway-cc-home-") as home:
        env = claude_env(base_url, api_key, config_dir=home, home=home, extra=extra_env)
        proc = subprocess.Popen(
            cmd,
            cwd=os.fspath(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=time_limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            stdout, stderr = proc.communicate()
            raise ClaudeRunError(f"claude timed out after {time_limit:.0f}s", None, stdout, stderr) from None
        finally:
            if proc.poll() is None:
                _kill_group(proc.pid)
                proc.wait()
    return _parse_result(proc.returncode, stdout, stderr)


