"""``[admin] port``: the admin API on a port of its own, where only ``/admin`` answers, while ``/admin`` on the
client port is an unknown path. In process (two sites of one app, as `tollway.server` runs them) and through a
real ``tollway serve``."""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.api.test_admin import TOKEN, error_of, ok
from tests.conftest import Upstream, gateway_config
from tests.support.loop_thread import LoopThread
from tests.test_server import TOLLWAY, clean_env, free_port, wait_healthy
from tollway.api.app import create_app
from tollway.config import AdminConfig

ADMIN = {"x-admin-token": TOKEN}


class TwoSites:
    """One app served on a client port and on an admin socket bound beforehand, as `tollway serve` does."""

    def __init__(self, upstream: Upstream, db: Path) -> None:
        self.admin_sock = socket.socket()
        self.admin_sock.bind(("127.0.0.1", 0))
        self.admin_sock.listen()
        admin_port = self.admin_sock.getsockname()[1]
        config = gateway_config(upstream.url, db)
        self.config = dataclasses.replace(config, admin=AdminConfig(token=TOKEN, port=admin_port))
        self.app = create_app(self.config)
        self.thread = LoopThread("tollway-two-sites")
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
        client_port = self.thread.run(self._start())
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    async def _start(self) -> int:
        await self.runner.setup()
        client = web.TCPSite(self.runner, "127.0.0.1", 0)
        await client.start()
        await web.SockSite(self.runner, self.admin_sock).start()
        return int(client._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def close(self) -> None:
        self.thread.run(self.runner.cleanup())
        self.thread.stop()


@pytest.fixture(scope="module")
def sites(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoSites]:
    two = TwoSites(upstream, tmp_path_factory.mktemp("admin-port") / "tollway.db")
    yield two
    two.close()


def test_the_admin_port_serves_the_admin_api(sites: TwoSites) -> None:
    key = ok(httpx.post(sites.admin_url + "/admin/keys", json={"name": "on-its-own-port"}, headers=ADMIN), 201)
    assert ok(httpx.get(sites.admin_url + f"/admin/keys/{key['id']}", headers=ADMIN))["name"] == "on-its-own-port"
    assert ok(httpx.get(sites.admin_url + "/admin/upstreams", headers=ADMIN))["data"]
    error_of(httpx.get(sites.admin_url + "/admin/keys"), 401, "authentication_error")
    error_of(httpx.get(sites.admin_url + "/admin/nothing", headers=ADMIN), 404, "not_found_error")
    # The client key made there works on the client port.
    r = httpx.get(sites.client_url + "/v1/models", headers={"x-api-key": key["secret"]})
    assert r.status_code == 200 and r.json()["data"]


@pytest.mark.parametrize("headers", [ADMIN, {}, {"authorization": f"Bearer {TOKEN}"}])
@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin"),
                                              ("GET", "/admin/openapi.json"), ("GET", "/admin/nothing")])
def test_on_the_client_port_admin_is_an_unknown_path(sites: TwoSites, headers: dict[str, str], method: str,
                                                     path: str) -> None:
    r = httpx.request(method, sites.client_url + path, headers=headers, json={"name": "x"})
    assert error_of(r, 404, "not_found_error") == "Not found"


@pytest.mark.parametrize(("method", "path"), [("GET", "/healthz"), ("GET", "/v1/models"), ("POST", "/v1/messages"),
                                              ("GET", "/"), ("GET", "/adminx")])
def test_on_the_admin_port_nothing_but_admin_answers(sites: TwoSites, method: str, path: str) -> None:
    r = httpx.request(method, sites.admin_url + path, headers=ADMIN | {"x-api-key": "tw-x"})
    assert error_of(r, 404, "not_found_error") == "Not found"
    assert httpx.get(sites.client_url + "/healthz").status_code == 200


def test_refusals_on_the_client_port_do_not_count_as_failed_attempts(sites: TwoSites) -> None:
    for _ in range(30):
        assert httpx.get(sites.client_url + "/admin/keys").status_code == 404
    assert ok(httpx.get(sites.admin_url + "/admin/keys", headers=ADMIN))["data"]


def test_tollway_serve_listens_on_the_admin_port(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    config = tmp_path / "tollway.toml"
    config.write_text(f'[server]\nport = {port}\n[storage]\nurl = "sqlite:///{tmp_path}/t.db"\n'
                      f'[admin]\ntoken = "{TOKEN}"\nport = {admin_port}\n'
                      '[[upstreams]]\nname = "mock"\nkind = "mock"\n'
                      '[[models]]\nname = "m"\ntargets = [{ upstream = "mock" }]\n', encoding="utf-8")
    proc = subprocess.Popen([*TOLLWAY, "serve", "--config", str(config)], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        wait_healthy(url, proc)
        keys = ok(httpx.get(admin_url + "/admin/keys", headers=ADMIN))["data"]
        assert [k["name"] for k in keys] == ["default"]  # the first key, made at start
        error_of(httpx.get(url + "/admin/keys", headers=ADMIN), 404, "not_found_error")
        error_of(httpx.get(admin_url + "/healthz"), 404, "not_found_error")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert f"admin:    http://127.0.0.1:{admin_port}/admin (its own port)" in out


def test_tollway_serve_refuses_an_admin_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = tmp_path / "tollway.toml"
        config.write_text(f'[admin]\ntoken = "{TOKEN}"\nport = {busy}\n[[upstreams]]\nname = "mock"\nkind = "mock"\n'
                          '[[models]]\nname = "m"\ntargets = [{ upstream = "mock" }]\n', encoding="utf-8")
        done = subprocess.run([*TOLLWAY, "serve", "--config", str(config), "--port", str(free_port())], cwd=tmp_path,
                              env=clean_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert f"admin.port: cannot listen on 127.0.0.1:{busy}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    clash = subprocess.run([*TOLLWAY, "serve", "--config", str(config), "--port", str(busy)], cwd=tmp_path,
                           env=clean_env(), capture_output=True, text=True, timeout=30)
    assert "it is the client port (server.port, or --port)" in clash.stderr, clash.stderr
