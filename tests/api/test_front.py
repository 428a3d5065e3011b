"""The front (`tollway.api.front`) on the wire: raw bytes to the gateway's port, answers read by h11 (strict, so
a framing mistake fails the test). Requests pipelined, split byte by byte, or on a connection that moves to
aiohttp mid-way; what the front hands over (other paths, chunked bodies, Expect, HTTP/1.0, malformed or
oversized heads) still answered as aiohttp answers it; a reader that does not keep up; and any head at all."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, Upstream, gateway_config

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM_BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 16, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()


def post(secret: str, body: bytes = BODY, path: str = "/v1/messages", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: t\r\nx-api-key: {secret}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


class Wire:
    """One raw connection to the gateway, its answers parsed by h11 as a client would."""

    def __init__(self, gateway: Gateway) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.server.port), timeout=10)
        self.h11 = h11.Connection(h11.CLIENT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, request: h11.Request | None = None) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
        """The next answer: its head and whole body. h11 must be told each request before its answer."""
        self.h11.send(request or h11.Request(method="POST", target="/", headers=[("host", "t")]))
        if self.h11.our_state is h11.SEND_BODY:
            self.h11.send(h11.EndOfMessage())
        head: Any = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return head, body
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before an answer")

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def served(request: pytest.FixtureRequest, upstream: Upstream,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """A gateway on each event loop (uvloop is what `tollway serve` runs: its transports differ), and a key."""
    loop = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop
    gw = Gateway(gateway_config(upstream.url, tmp_path_factory.mktemp("front") / "tollway.db"), loop)
    yield gw, gw.create_key("front")
    gw.server.close()


@pytest.fixture()
def gateway(served: tuple[Gateway, str]) -> Gateway:
    return served[0]


@pytest.fixture()
def secret(served: tuple[Gateway, str]) -> str:
    return served[1]


@pytest.fixture()
def wire(gateway: Gateway) -> Iterator[Wire]:
    w = Wire(gateway)
    yield w
    w.close()


def header(head: Any, name: str) -> str | None:
    return next((v.decode() for k, v in head.headers if k.decode() == name), None)


def test_pipelined_requests_are_answered_in_order(wire: Wire, secret: str) -> None:
    wire.send(post(secret) + post(secret, STREAM_BODY) + post(secret, b"{", extra="x-n: 3\r\n"))
    first, body = wire.answer()
    assert first.status_code == 200 and json.loads(body)["type"] == "message"
    assert header(first, "server") is None  # the front's answer, not aiohttp's
    second, stream = wire.answer()
    assert second.status_code == 200 and header(second, "content-type") == "text/event-stream; charset=utf-8"
    assert stream.startswith(b"event: message_start") and b"event: message_stop" in stream
    third, error = wire.answer()
    assert third.status_code == 400 and json.loads(error)["error"]["type"] == "invalid_request_error"
    ids = [header(h, "request-id") for h in (first, second, third)]
    assert len(set(ids)) == 3 and all(i and i.startswith("req_") for i in ids)


def test_a_request_sent_a_byte_at_a_time(wire: Wire, secret: str) -> None:
    wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in post(secret):
        wire.send(bytes([byte]))
    head, body = wire.answer()
    assert head.status_code == 200 and json.loads(body)["type"] == "message"


def test_a_connection_moves_to_aiohttp_for_other_paths_and_stays_served(wire: Wire, secret: str) -> None:
    wire.send(post(secret))
    assert wire.answer()[0].status_code == 200
    wire.send(f"GET /v1/models HTTP/1.1\r\nhost: t\r\nx-api-key: {secret}\r\n\r\n".encode())
    head, body = wire.answer(h11.Request(method="GET", target="/v1/models", headers=[("host", "t")]))
    assert head.status_code == 200 and json.loads(body)["data"]
    # aiohttp serves the connection from then on, the messages endpoint included.
    wire.send(post(secret))
    head, body = wire.answer()
    assert head.status_code == 200 and json.loads(body)["type"] == "message"
    assert "aiohttp" in (header(head, "server") or "")  # aiohttp's answer: the connection is its own now


@pytest.mark.parametrize("how", ["chunked", "expect", "http/1.0"])
def test_what_the_front_hands_over_is_answered_as_before(wire: Wire, secret: str, how: str) -> None:
    if how == "chunked":
        wire.send(f"POST /v1/messages HTTP/1.1\r\nhost: t\r\nx-api-key: {secret}\r\ntransfer-encoding: chunked\r\n"
                  f"content-type: application/json\r\n\r\n{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n")
    elif how == "expect":
        wire.send(post(secret, extra="expect: 100-continue\r\n").removesuffix(BODY))
        time.sleep(0.2)  # the 100 Continue comes first
        wire.send(BODY)
    else:
        wire.send(post(secret).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    head, body = wire.answer()
    assert head.status_code == 200, body
    assert json.loads(body)["type"] == "message"


def test_a_head_past_the_fronts_limit_is_served_by_aiohttp(wire: Wire, secret: str) -> None:
    padding = "".join(f"x-padding-{i}: {'p' * 4000}\r\n" for i in range(3))  # 12 KB of head, no line too long
    wire.send(post(secret, extra=padding))
    head, body = wire.answer()
    assert head.status_code == 200 and json.loads(body)["type"] == "message"
    assert header(head, "server") is not None and "aiohttp" in (header(head, "server") or "")


def test_too_large_malformed_and_wrong_method_get_anthropic_errors(gateway: Gateway, secret: str) -> None:
    limit = gateway.config.server.max_body_bytes
    cases = [
        (f"POST /v1/messages HTTP/1.1\r\nhost: t\r\nx-api-key: {secret}\r\ncontent-length: {limit + 1}\r\n\r\n"
         .encode(), 413, "request_too_large"),
        (f"GET /v1/messages HTTP/1.1\r\nhost: t\r\nx-api-key: {secret}\r\n\r\n".encode(), 405, None),
    ]
    for raw, status, error_type in cases:
        w = Wire(gateway)
        try:
            w.send(raw)
            head, body = w.answer()
            assert head.status_code == status
            assert json.loads(body)["type"] == "error" and header(head, "request-id")
            if error_type:
                assert json.loads(body)["error"]["type"] == error_type
        finally:
            w.close()
    w = Wire(gateway)
    try:
        w.send(b"POST /v1/messages HTTP/1.1\r\nhost: t\r\nbad header\r\ncontent-length: 0\r\n\r\n")
        head, _ = w.answer()
        assert head.status_code == 400
    finally:
        w.close()


def test_connection_close_is_honoured(wire: Wire, secret: str) -> None:
    wire.send(post(secret, extra="connection: close\r\n"))
    head, _ = wire.answer()
    assert head.status_code == 200 and header(head, "connection") == "close"
    assert wire.closed()


def test_a_reader_that_does_not_keep_up_loses_nothing(gateway: Gateway, secret: str) -> None:
    # A hundred streams' worth asked at once, then read slowly: the front waits for the socket to drain.
    w = Wire(gateway)
    w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        w.send(post(secret, STREAM_BODY) * 100)
        time.sleep(0.3)
        for _ in range(100):
            head, body = w.answer()
            assert head.status_code == 200 and body.count(b"event: message_stop") == 1
    finally:
        w.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["POST", "GET", "PUT", "P0ST", ""]),
       path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens", "/v1/messages?beta=true", "/x", "*"]),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x"]),
       lines=st.lists(st.sampled_from([
           "content-length: 2", "content-length: 0", "content-length: -1", "content-length: 99999999999",
           "content-length: 2", "transfer-encoding: chunked", "expect: 100-continue", "connection: close",
           "x-api-key: wrong", "content-type: application/json", "upgrade: websocket", "bad line", "x:\tok",
       ]), max_size=5),
       body=st.binary(max_size=8))
def test_any_head_gets_an_http_answer_or_a_close(gateway: Gateway, method: str, path: str, version: str,
                                                 lines: list[str], body: bytes) -> None:
    raw = f"{method} {path} {version}\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5) as sock:
        sock.sendall(raw.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pytest.fail(f"no answer and no close for {raw!r}")
        except ConnectionResetError:
            pass
    # Whatever came is HTTP: a status line, or nothing at all (closed).
    assert got == b"" or got.startswith(b"HTTP/"), got[:200]
    assert b"Traceback" not in got
