"""Server subprocesses for the bench: start, wait until ready, sample CPU time, always stop."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
# Where the scale-out rows (run.py's tollway-shared, replicas.py) find PostgreSQL and Redis; they are skipped
# or fail when these are not reachable.
BENCH_POSTGRES = os.environ.get("TOLLWAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BENCH_REDIS = os.environ.get("TOLLWAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Limits and money far above what the bench uses: every request pays for the checks (three buckets and a
# concurrency slot, a prepaid balance and a daily cap: reserve, settle, two ledger entries), none is refused.
LIMITED_KEY = ["--rpm", "100000000", "--itpm", "2000000000", "--otpm", "2000000000", "--max-concurrency", "100000",
               "--budget-usd", "1000000", "--cap-usd", "1000000", "--period", "day"]


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # A SIGTERM to the harness must still run the finally that stops the servers.
    raise KeyboardInterrupt


def git_commit(repo: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def git_dirty(repo: Path, paths: Sequence[str] = ("src",)) -> bool | None:
    """Whether the tree has uncommitted changes under `paths` (the code measured is then not `git_commit`'s)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", *paths],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def bench_database(database: str) -> tuple[str | None, str]:
    """A fresh PostgreSQL database on BENCH_POSTGRES's server: its URL, or None and why not."""
    import asyncio
    import atexit

    import asyncpg  # type: ignore[import-untyped]

    admin = BENCH_POSTGRES.replace("postgresql://", "postgres://")

    async def run(*statements: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    drop = f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    try:
        asyncio.run(run(drop, f"CREATE DATABASE {database}"))
        # Dropped when the bench exits, after its servers are stopped.
        atexit.register(lambda: asyncio.run(run(drop)))
    except (OSError, asyncpg.PostgresError) as exc:
        return None, f"PostgreSQL at {BENCH_POSTGRES} unavailable: {exc}"
    return BENCH_POSTGRES.rsplit("/", 1)[0] + f"/{database}", ""


def _die_with_parent() -> None:
    # Runs in the child before exec: if the harness is SIGKILLed, its finally never runs, and without
    # this the servers would keep their ports and CPU forever.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Server:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("wb") as out:
            # Own session: a Ctrl-C in the terminal reaches only the harness, whose finally stops the
            # servers in order instead of every process dying mid-write at once.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        """``sig`` to the server and its workers: the group is the one start_new_session made for this child, so
        this reaches only them."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            self.signal_group(sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def wait_tcp(server: Server, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited during startup:\n{log_tail(server.log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not accepting on port {port} after {timeout:.0f}s:\n{log_tail(server.log)}")


def wait_http_ok(server: Server, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited during startup:\n{log_tail(server.log)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{server.name}: {url} not 200 after {timeout:.0f}s ({last}):\n{log_tail(server.log)}")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses; everything after the last ')' is well formed.
    return raw[raw.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _sched_ns(pid: int) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total


def cpu_sample(root: int) -> tuple[int, int]:
    """CPU used so far by a process and its live descendants (a gateway may fork workers).

    Returns (utime+stime in clock ticks from /proc/<pid>/stat, on-CPU nanoseconds from the threads'
    schedstat). Ticks are the classic measure but 10 ms coarse: a cell that costs the server 150 ms
    is then only good to about 7%. schedstat counts nanoseconds, so it stays sharp on short cells.
    """
    ticks = ns = 0
    for pid in _descendants(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the comm split, utime and stime (stat fields 14 and 15) sit at indices 11 and 12.
            ticks += int(fields[11]) + int(fields[12])
            ns += _sched_ns(pid)
    return ticks, ns


@contextlib.contextmanager
def paused(servers: Sequence[Server]) -> Iterator[None]:
    """``servers`` stopped (SIGSTOP) for the block, and resumed after: an idle server's own timers (LiteLLM's
    background tasks, a second Tollway's refreshes) then cannot land in what is being measured."""
    for server in servers:
        server.signal_group(signal.SIGSTOP)
    try:
        yield
    finally:
        for server in servers:
            server.signal_group(signal.SIGCONT)


def machine_ticks() -> tuple[int, int, int]:
    """(all, busy, steal) clock ticks of the machine's CPUs so far, from /proc/stat: busy is neither idle, nor
    waiting on I/O, nor stolen; steal is time the hypervisor gave this machine's CPUs to someone else."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return sum(fields), user + nice + system + irq + softirq, steal


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit toward `wanted` (as far as the hard limit allows); servers started
    afterwards inherit it. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _status_kb(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def memory_kb(root: int) -> dict[str, int]:
    """Resident memory of a process and its live descendants, in KiB: `rss` now (VmRSS) and `peak` (VmHWM,
    the most it has held since it started or since reset_peak), each summed over the processes."""
    pids = _descendants(root)
    return {"rss": sum(_status_kb(p, "VmRSS") for p in pids), "peak": sum(_status_kb(p, "VmHWM") for p in pids)}


def reset_peak(root: int) -> bool:
    """Set VmHWM back to the current RSS for a process and its descendants (`5` to /proc/PID/clear_refs, which
    Linux allows for one's own processes), so the next memory_kb's peak is that of what ran in between.
    False if the kernel refused: the peak then counts from the process's start."""
    ok = True
    for pid in _descendants(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


@dataclass
class TollwaySetup:
    command: list[str]
    env: dict[str, str]
    api_key: str


def write_tollway_config(
    path: Path, tmpdir: Path, port: int, upstream_port: int, openai_model: tuple[str, str] | None = None,
    storage_url: str | None = None, limits_url: str | None = None,
) -> None:
    """Tollway's bench config: the Anthropic model relayed to the fake, and with `openai_model`
    (client name, upstream name) a second model translated to the fake's OpenAI Chat Completions API."""
    openai = ""
    if openai_model is not None:
        client_name, upstream_name = openai_model
        openai = f"""
[[upstreams]]
name = "fake-openai"
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_keys = ["upstream-secret"]
family = "generic"

[[models]]
name = "{client_name}"
targets = [{{ upstream = "fake-openai", model = "{upstream_name}" }}]
"""
    limits = f'\n[limits]\nurl = "{limits_url}"\nprefix = "tollway-bench:{port}:"\n' if limits_url else ""
    path.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}

[storage]
url = "{storage_url or f"sqlite:///{tmpdir}/tollway.db"}"
{limits}
[[upstreams]]
name = "fake"
kind = "anthropic"
base_url = "http://127.0.0.1:{upstream_port}"
api_keys = ["upstream-secret"]

[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "fake" }}]
{openai}"""
    )


def src_env(repo: Path) -> dict[str, str]:
    """This environment with ``repo``'s src first on the path: its Tollway is imported, installed or not."""
    env = dict(os.environ)
    return dict(env, PYTHONPATH=os.pathsep.join(p for p in (str(repo / "src"), env.get("PYTHONPATH")) if p))


def tollway_candidates(repo: Path, python: str) -> list[tuple[list[str], dict[str, str]]]:
    script = repo / ".venv" / "bin" / "tollway"
    found: list[tuple[list[str], dict[str, str]]] = []
    if script.exists() and os.access(script, os.X_OK):
        found.append(([str(script)], dict(os.environ)))
    # The module fallback also works from an uninstalled checkout.
    found.append(([python, "-m", "tollway"], src_env(repo)))
    return found


def create_tollway_key(
    candidates: Sequence[tuple[list[str], dict[str, str]]], config: Path
) -> tuple[TollwaySetup | None, str]:
    """The first command whose `keys create` works, with its key; else None and why each failed."""
    failures: list[str] = []
    for command, env in candidates:
        argv = [*command, "keys", "create", "--config", str(config), "--name", "bench"]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"$ {' '.join(argv)}\n  {exc}")
            continue
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and lines:
            return TollwaySetup(command, env, lines[-1]), ""
        tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        failures.append(f"$ {' '.join(argv)}\n  exit {done.returncode}: {tail}")
    return None, "\n".join(failures)
