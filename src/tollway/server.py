"""``tollway serve``: the startup banner, the first key, and the aiohttp server on uvloop, in one process or
in several that share the port (``--workers N``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp import web

from tollway.accounting.keys import new_account, new_key
from tollway.api.app import create_app, front_site
from tollway.api.worker_metrics import WorkerSlot
from tollway.config import Config
from tollway.errors import ConfigError
from tollway.store import open_store
from tollway.store.sql import display_url

log = logging.getLogger("tollway")


async def _first_key(config: Config) -> str | None:
    """On a database with no keys, make one so the first curl works; its secret is shown this once."""
    store = open_store(config.storage)
    try:
        await store.ensure_current(auto_migrate=store.dialect == "sqlite")
        # Only for the one-machine start: replicas on one PostgreSQL would race to make it; keys for those
        # are made with `tollway keys create`.
        if store.dialect != "sqlite" or await store.list_keys():
            return None
        record, secret = new_key("default", None)
        account = new_account("default", record.created_at)
        await store.insert_key(dataclasses.replace(record, account_id=account.id), account)
        return secret
    finally:
        await store.close()


def banner(config: Config, secret: str | None) -> str:
    host = config.server.host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{config.server.port}"
    lines = [f"Tollway listening on {url}", f"  config:   {config.source}",
             f"  storage:  {display_url(config.storage.url)}"]
    if config.admin.enabled and config.admin.port is not None:
        lines.append(f"  admin:    http://{config.admin.host}:{config.admin.port}/admin (its own port)")
    for u in config.upstreams:
        where = "built-in, answers in-process" if u.kind == "mock" else u.base_url
        lines.append(f"  upstream: {u.name} ({u.kind}) {where}")
    lines.append(f"  models:   {len(config.models)} ({', '.join(m.name for m in config.models[:3])}"
                 f"{', ...' if len(config.models) > 3 else ''})")
    if config.uses_mock:
        lines += ["", "  MOCK UPSTREAM: no ANTHROPIC_API_KEY and no config file, so answers come from Tollway's",
                  "  built-in mock, not from a model. Set ANTHROPIC_API_KEY or write a tollway.toml for real ones."]
    if secret is not None:
        served = [m.name for m in config.models]
        model = "claude-sonnet-4-6" if "claude-sonnet-4-6" in served else served[0]  # a config may not route it
        body = orjson.dumps({"model": model, "max_tokens": 256,
                             "messages": [{"role": "user", "content": "Hello"}]}).decode()
        lines += ["", "  A first key was created (shown once, keep it):", f"    {secret}", "",
                  "  Try it:",
                  f"    curl {url}/v1/messages -H 'x-api-key: {secret}' -H 'anthropic-version: 2023-06-01' "
                  f"-H 'content-type: application/json' -d {shlex.quote(body)}",
                  # Claude Code's own default model is newer than the ones served: name one that is.
                  "", f"  Claude Code: ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY={secret} "
                      f"ANTHROPIC_MODEL={shlex.quote(model)} claude"]
    else:
        lines += ["", "  Keys exist already: `tollway keys list`, or make one with `tollway keys create --name NAME`."]
    return "\n".join(lines)


def serve(config: Config, host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    server = dataclasses.replace(config.server, host=host or config.server.host,
                                 port=config.server.port if port is None else port,
                                 workers=config.server.workers if workers is None else workers)
    config = dataclasses.replace(config, server=server)
    admin_sock = _admin_socket(config)
    if admin_sock is not None:
        config = dataclasses.replace(config, admin=dataclasses.replace(config.admin,
                                                                       port=admin_sock.getsockname()[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional on platforms that lack it
        pass
    # Migrations and the first key happen here, once, before any worker starts.
    secret = asyncio.run(_first_key(config))
    if server.workers == 1:
        print(banner(config, secret), flush=True)
        _run(config, admin_sock=admin_sock)
        return 0
    # The port is held (bound, not listening) for the workers' lifetime: port 0 picks one for all of them.
    held = socket.socket(socket.AF_INET6 if ":" in server.host else socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((server.host, server.port))
    config = dataclasses.replace(config, server=dataclasses.replace(server, port=held.getsockname()[1]))
    print(banner(config, secret) + f"\n  workers:  {server.workers} processes on one port", flush=True)
    # Where the workers leave their /metrics figures for each other (see tollway.api.worker_metrics).
    metrics_dir = Path(tempfile.mkdtemp(prefix="tollway-metrics-"))
    try:
        return Workers(config, held, admin_sock, metrics_dir).run()
    finally:
        held.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _admin_socket(config: Config) -> socket.socket | None:
    """The admin API's own listening socket, when ``[admin] port`` asks for one. Bound here, before the app is
    made, so that the app knows the real port (port 0 picks one) and workers all accept from the one socket."""
    admin = config.admin
    if not admin.enabled or admin.port is None:
        return None
    where = f"{config.source}: admin.port: cannot listen on {admin.host}:{admin.port}"
    if admin.port != 0 and admin.port == config.server.port:
        raise ConfigError(f"{where}: it is the client port (server.port, or --port)")
    sock = socket.socket(socket.AF_INET6 if ":" in admin.host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((admin.host, admin.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    return sock


def _run(config: Config, reuse_port: bool = False, admin_sock: socket.socket | None = None,
         worker: WorkerSlot | None = None) -> None:
    asyncio.run(_serve(config, reuse_port, admin_sock, worker))


async def _serve(config: Config, reuse_port: bool, admin_sock: socket.socket | None, worker: WorkerSlot | None) -> None:
    """Serve until SIGTERM or SIGINT, then drain: new connections refused, requests under way given
    ``shutdown_timeout`` to finish, the usage written."""
    server = config.server
    # handler_cancellation: a client that hangs up cancels its handler, which closes the upstream call.
    runner = web.AppRunner(create_app(config, worker), handler_cancellation=True, access_log=None,
                           shutdown_timeout=server.shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await front_site(runner, config, server.host, server.port, reuse_port=reuse_port).start()
        if admin_sock is not None:  # the admin API's own port: a second site of the same app, on the same loop
            await web.SockSite(runner, admin_sock).start()
        await stop.wait()
    finally:
        await runner.cleanup()


_PR_SET_PDEATHSIG = 1


def _end_with(parent: int) -> None:
    """Have this worker get SIGTERM when its parent goes (SIGKILLed, or killed for memory): it drains and exits
    as on any SIGTERM, rather than serving on with no one to restart it, holding a share of the port."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only: elsewhere the worker outlives its parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # gone already, before the request above
        os.kill(os.getpid(), signal.SIGTERM)


class Workers:
    """Forked processes each listening on the port with SO_REUSEPORT, so the kernel spreads connections over
    them. A worker that dies is started again (at most once a second); SIGTERM or SIGINT is passed to every
    worker, which drains and flushes as a single process does, and ends the parent once they have all exited.
    """

    RESTART_DELAY = 1.0

    def __init__(self, config: Config, held: socket.socket, admin_sock: socket.socket | None,
                 metrics_dir: Path) -> None:
        self._config = config
        self._held = held
        self._admin_sock = admin_sock
        self._metrics_dir = metrics_dir
        self._pids: dict[int, int] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                self._held.close()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                _end_with(parent)
                _run(self._config, reuse_port=True, admin_sock=self._admin_sock,
                     worker=WorkerSlot(index, self._metrics_dir))
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self._pids[pid] = index

    def _stop(self, signum: int, _: object) -> None:
        self._stopping = True
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for index in range(self._config.server.workers):
            self._spawn(index)
        gc.enable()  # off for the start (tollway.__main__); each worker turns its own on when it has started
        last_restart = 0.0
        failed = False
        while self._pids:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self._pids:
                continue
            index = self._pids.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                failed = failed or code not in (0, -signal.SIGTERM, -signal.SIGINT)
                continue
            log.error("worker %d (pid %d) exited with %d; starting it again", index, pid, code)
            time.sleep(max(0.0, last_restart + self.RESTART_DELAY - time.monotonic()))
            last_restart = time.monotonic()
            if not self._stopping:
                self._spawn(index)
        return 1 if failed else 0
