"""LiteLLM's proxy as a bench target: its own virtual environment, a config routing the bench model to the fake.

    .venv/bin/python bench/litellm_proxy.py            # install (once) and print the version, or why not

The venv is `.cache/bench-litellm-venv` (git ignores `.cache/`), made once with `pip install 'litellm[proxy]'`
(latest at that moment; the version installed goes into the results). A file `.bench-installed` in it marks a
finished install, so an install interrupted halfway is redone rather than trusted. `--litellm-reinstall` in
run.py (or `reinstall=True`) throws it away and installs again.

The proxy runs as `litellm --config <tmp>/litellm.yaml --host 127.0.0.1 --port P --num_workers 1`, with one
model, `claude-sonnet-4-6`, whose `litellm_params` are `model: anthropic/claude-sonnet-4-6`,
`api_base: <the fake>` and an upstream key, and `general_settings.master_key`. Clients call its Anthropic
endpoint, `POST /v1/messages`, with the master key as `x-api-key`: the same body and headers as Tollway's rows.
No database: LiteLLM then checks the master key only (no virtual keys, no spend rows). Environment:
`LITELLM_LOG=ERROR` (which also turns uvicorn's per-request access log off: Tollway writes none either),
`LITELLM_LOCAL_MODEL_COST_MAP=True` (the bench machine has no internet; LiteLLM would otherwise try to fetch
its price list at start and fall back after retries), `LITELLM_MODE=PRODUCTION` (no `.env` loading), and no
`DATABASE_URL`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from procs import Server, wait_http_ok

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = REPO / ".cache" / "bench-litellm-venv"
SPEC = "litellm[proxy]"
MARKER = ".bench-installed"
MASTER_KEY = "sk-tollway-bench-master-key"
MODEL = "claude-sonnet-4-6"


def ensure_venv(reinstall: bool = False, timeout: float = 1800.0) -> tuple[Path | None, str]:
    """The venv's `litellm` launcher, installing it first if needed; or None and why not."""
    launcher = VENV / "bin" / "litellm"
    marker = VENV / MARKER
    if reinstall and VENV.exists():
        import shutil

        shutil.rmtree(VENV)
    if launcher.exists() and marker.exists():
        return launcher, ""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing {SPEC} into {VENV.relative_to(REPO)} (once; a few minutes)...", file=sys.stderr, flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", SPEC],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(step)}` failed: {exc}"
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            return None, f"`{' '.join(step)}` exited {done.returncode}:\n{tail}"
    if not launcher.exists():
        return None, f"{SPEC} installed but {launcher} is missing"
    marker.write_text(version() or "?")
    return launcher, ""


def version() -> str | None:
    python = VENV / "bin" / "python"
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def write_config(path: Path, upstream_port: int) -> None:
    path.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: anthropic/{MODEL}
      api_base: http://127.0.0.1:{upstream_port}
      api_key: upstream-secret
general_settings:
  master_key: {MASTER_KEY}
"""
    )


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DIRECT_URL", "DATABASE_HOST")}
    env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MODE="PRODUCTION")
    return env


def command(launcher: Path, config: Path, port: int) -> list[str]:
    return [str(launcher), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]


def start(
    tmp: Path, upstream_port: int, port: int, servers: list[Server], reinstall: bool = False
) -> tuple[Server | None, str]:
    """Start the proxy and wait for /health/liveliness; None and why if it cannot be installed or started."""
    launcher, why = ensure_venv(reinstall)
    if launcher is None:
        return None, why
    config = tmp / "litellm.yaml"
    write_config(config, upstream_port)
    server = Server("litellm", command(launcher, config, port), tmp / "litellm.log", environment())
    servers.append(server)
    server.start()
    try:
        # A cold start imports a great deal (about 9 s on the 2-core bench machine).
        wait_http_ok(server, f"http://127.0.0.1:{port}/health/liveliness", timeout=180.0)
    except RuntimeError as exc:
        server.stop()
        return None, str(exc)
    return server, ""


if __name__ == "__main__":
    found, reason = ensure_venv()
    print(f"litellm {version()} at {found}" if found else f"not available: {reason}")
    sys.exit(0 if found else 1)
