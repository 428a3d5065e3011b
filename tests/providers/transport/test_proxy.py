"""The pool through a forward proxy on loopback: CONNECT with the proxy's credentials, TLS end to end inside the
tunnel, tunnels kept alive like any connection, and a proxy that refuses or is away. Each test runs on both event
loops (see conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from tests.providers.transport.connect_proxy import ConnectProxy
from tests.providers.transport.servers import OpenPool, Serve, keep_alive, ok
from tollway.config.proxy import parse_proxy
from tollway.providers.transport import TransportError


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    running = await ConnectProxy().start()
    yield running
    await running.stop()


async def test_http_through_a_tunnel_with_the_proxys_credentials(serve: Serve, open_pool: OpenPool,
                                                                 proxy: ConnectProxy) -> None:
    sent: list[bytes] = []
    server = await serve(keep_alive(ok(b"through"), requests=sent))
    pool = open_pool(server.url(), proxy=parse_proxy(f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}"))
    for _ in range(2):
        resp = await pool.post("/v1/messages", b"{}", {"x-api-key": "k"}, first_byte=5)
        assert await resp.read(idle=5) == b"through"
    # One tunnel, kept alive for both requests; the user and password as the URL spelled them, decoded.
    assert proxy.connects == [(f"127.0.0.1:{server.port}", "Basic " + base64.b64encode(b"us@er:p:ss").decode())]
    assert server.connections == 1 and len(sent) == 2
    assert sent[0].startswith(b"POST /v1/messages HTTP/1.1\r\n")


async def test_https_is_verified_end_to_end_inside_the_tunnel(serve: Serve, open_pool: OpenPool,
                                                             proxy: ConnectProxy, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = await serve(keep_alive(ok(b"secret")), ssl_context=server_ctx)
    through = parse_proxy(proxy.url)

    untrusted = open_pool(f"https://localhost:{server.port}", proxy=through)
    with pytest.raises(TransportError, match=r"SSLCertVerificationError|certificate verify failed"):
        await untrusted.post("/", b"", {}, first_byte=5)

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    pool = open_pool(f"https://localhost:{server.port}", proxy=through)
    resp = await pool.post("/", b"", {}, first_byte=5)
    assert await resp.read(idle=5) == b"secret"
    # The proxy was asked for the host by name (the certificate's), and saw no credentials: none were given.
    assert proxy.connects[-1] == (f"localhost:{server.port}", None)


async def test_a_refusing_proxy_is_a_transport_error_that_says_so(open_pool: OpenPool) -> None:
    proxy = await ConnectProxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n"
                               ).start()
    try:
        pool = open_pool("http://upstream.invalid:8080", proxy=parse_proxy(proxy.url))
        with pytest.raises(TransportError, match=r"refused the tunnel to upstream.invalid:8080: 407 Proxy Auth"):
            await pool.post("/", b"", {}, first_byte=5)
    finally:
        await proxy.stop()


async def test_a_proxy_that_is_away_or_not_http_is_a_transport_error(open_pool: OpenPool) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = open_pool("http://upstream.invalid", proxy=parse_proxy(f"http://127.0.0.1:{port}"))
    with pytest.raises(TransportError, match=f"cannot connect to the proxy 127.0.0.1:{port}"):
        await pool.post("/", b"", {}, first_byte=5)

    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    try:
        address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = open_pool("http://upstream.invalid", proxy=parse_proxy(address))
        with pytest.raises(TransportError, match="not HTTP"):
            await pool.post("/", b"", {}, first_byte=5)
    finally:
        server.close()
        await server.wait_closed()
