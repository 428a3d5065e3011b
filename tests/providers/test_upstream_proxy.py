"""An upstream behind a forward proxy, end to end: the SDK through Tollway, Tollway through a CONNECT proxy on
loopback, to the fake Anthropic upstream; streams and plain answers alike, the proxy's credentials sent."""

from __future__ import annotations

import base64
import dataclasses
import secrets
from pathlib import Path

import httpx

from tests.conftest import Gateway, Upstream, gateway_config
from tests.providers.transport.connect_proxy import proxy_in_thread
from tollway.config.proxy import parse_proxy


def test_requests_reach_the_upstream_through_its_proxy(upstream: Upstream, tmp_path: Path) -> None:
    with proxy_in_thread() as proxy:
        config = gateway_config(upstream.url, tmp_path / "tollway.db")
        through = parse_proxy(f"http://relay:s3cret@127.0.0.1:{proxy.port}")
        upstreams = tuple(dataclasses.replace(u, proxy=through) if u.name == "fake" else u for u in config.upstreams)
        gateway = Gateway(dataclasses.replace(config, upstreams=upstreams))
        try:
            client = gateway.client(gateway.create_key("behind-a-proxy"))
            plain, streamed = secrets.token_hex(8), secrets.token_hex(8)
            reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                           messages=[{"role": "user", "content": plain}])
            assert reply.content[0].type == "text" and plain in reply.content[0].text
            with client.messages.stream(model="claude-sonnet-4-6", max_tokens=16,
                                        messages=[{"role": "user", "content": streamed}]) as stream:
                assert streamed in stream.get_final_text()
        finally:
            gateway.server.close()
    assert upstream.fake.for_request_id(streamed).headers["x-api-key"] == "upstream-secret"
    target = upstream.url.removeprefix("http://")
    assert proxy.connects, "nothing went through the proxy"
    assert set(proxy.connects) == {(target, "Basic " + base64.b64encode(b"relay:s3cret").decode())}


def test_a_proxy_that_refuses_gives_the_client_an_anthropic_error(upstream: Upstream, tmp_path: Path) -> None:
    with proxy_in_thread(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n") as proxy:
        config = gateway_config(upstream.url, tmp_path / "tollway.db")
        through = parse_proxy(f"http://127.0.0.1:{proxy.port}")
        upstreams = tuple(dataclasses.replace(u, proxy=through) if u.name == "fake" else u for u in config.upstreams)
        gateway = Gateway(dataclasses.replace(config, upstreams=upstreams))
        try:
            secret = gateway.create_key("behind-a-refusing-proxy")
            r = httpx.post(f"{gateway.url}/v1/messages", headers={"x-api-key": secret}, timeout=30, json={
                "model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
        finally:
            gateway.server.close()
    assert r.status_code == 502
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "407" in body["error"]["message"] and body["request_id"] == r.headers["request-id"]
    assert proxy.connects  # it was asked, and said no
