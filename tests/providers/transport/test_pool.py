"""The upstream HTTP/1.1 pool against real sockets: servers on loopback that answer with bytes written out by
hand, so every framing (length, chunked, read-to-close), every way of closing, and every malformed answer is
exactly what the pool gets. Each test runs on both event loops (see conftest.py)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.providers.transport.servers import OpenPool, Serve, answer_once, keep_alive, ok, read_request
from tollway.providers.transport import Pool, TransportError, TransportTimeout


async def test_a_length_delimited_answer_reuses_its_connection(serve: Serve, open_pool: OpenPool) -> None:
    sent: list[bytes] = []
    server = await serve(keep_alive(ok(b'{"a":1}', b"X-Thing: One", b"x-thing: two"), requests=sent))
    pool = open_pool(server.url() + "/api/")
    for _ in range(3):
        resp = await pool.post("/v1/messages", b'{"q":1}', {"x-api-key": "k"}, first_byte=5)
        assert resp.status == 200
        assert resp.headers["x-thing"] == "One, two"  # names lowered, repeats joined
        assert resp.header("x-thing") == "One, two" and resp.header("content-length") == "7"
        assert resp.header("thing") is None and resp.header("x-thin") is None
        assert await resp.read(idle=5) == b'{"a":1}'
    assert server.connections == 1
    head, _, body = sent[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/messages HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in lines
    assert b"x-api-key: k" in lines and b"content-length: 7" in lines
    assert body == b'{"q":1}'


async def test_a_chunked_answer_arrives_piece_by_piece(serve: Serve, open_pool: OpenPool) -> None:
    go_on = asyncio.Event()

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
                     b"6\r\nevent:\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"3\r\n a\n\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)

    server = await serve(reply)
    pool = open_pool(server.url())
    resp = await pool.post("/v1/messages", b"{}", {}, first_byte=5)
    assert resp.headers["content-type"] == "text/event-stream"
    assert await resp.read_chunk(idle=5) == b"event:"  # before the rest was even written
    go_on.set()
    rest = b""
    while chunk := await resp.read_chunk(idle=5):
        rest += chunk
    assert rest == b" a\n"
    assert resp.at_eof
    resp.release()
    assert len(pool._idle) == 1  # read to its end: pooled


async def test_a_body_without_length_ends_with_the_connection(serve: Serve, open_pool: OpenPool) -> None:
    server = await serve(answer_once(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"))
    pool = open_pool(server.url())
    for _ in range(2):
        resp = await pool.post("/", b"", {}, first_byte=5)
        assert await resp.read(idle=5) == b"all of it"
    assert server.connections == 2  # never pooled


async def test_an_answer_cut_short_is_an_error(serve: Serve, open_pool: OpenPool) -> None:
    server = await serve(answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"))
    pool = open_pool(server.url())
    resp = await pool.post("/", b"", {}, first_byte=5)
    assert await resp.read_chunk(idle=5) == b"only this"  # what came is delivered first
    with pytest.raises(TransportError, match="closed the connection"):
        await resp.read_chunk(idle=5)


async def test_a_connection_the_server_dropped_while_idle_is_retried_once(serve: Serve,
                                                                          open_pool: OpenPool) -> None:
    # The first connection answers once, then closes when the second request comes, without a byte: the race
    # of a keep-alive timeout. The request goes again on a new connection.
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(ok(b"first" if number == 0 else b"again"))
        await writer.drain()
        await read_request(reader)  # and close without answering the next request

    server = await serve(reply)
    pool = open_pool(server.url())
    assert await (await pool.post("/", b"", {}, first_byte=5)).read(idle=5) == b"first"
    assert await (await pool.post("/", b"", {}, first_byte=5)).read(idle=5) == b"again"
    assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_not_retried(serve: Serve,
                                                                         open_pool: OpenPool) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)

    server = await serve(reply)
    pool = open_pool(server.url())
    with pytest.raises(TransportError, match="closed the connection"):
        await pool.post("/", b"", {}, first_byte=5)
    assert server.connections == 1


async def test_nobody_listening_is_an_error(open_pool: OpenPool) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = open_pool(f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError, match="cannot connect"):
        await pool.post("/", b"", {}, first_byte=5)


async def test_deadlines_for_the_head_and_for_each_silence(serve: Serve, open_pool: OpenPool) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        if number == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
            await writer.drain()
        await asyncio.sleep(30)

    server = await serve(reply)
    pool = open_pool(server.url())
    with pytest.raises(TransportTimeout):
        await pool.post("/", b"", {}, first_byte=0.1)
    resp = await pool.post("/", b"", {}, first_byte=5)
    assert await resp.read_chunk(idle=0.1) == b"half"
    with pytest.raises(TransportTimeout):
        await resp.read_chunk(idle=0.1)
    resp.close()
    assert server.connections == 2  # the timed-out connection was not reused


async def test_a_cancelled_read_loses_nothing(serve: Serve, open_pool: OpenPool) -> None:
    go_on = asyncio.Event()

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"data")
        await writer.drain()
        await asyncio.sleep(5)

    server = await serve(reply)
    pool = open_pool(server.url())
    resp = await pool.post("/", b"", {}, first_byte=5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await resp.read_chunk(idle=5)
    go_on.set()
    assert await resp.read(idle=5) == b"data"


async def test_a_slow_reader_pauses_the_socket(serve: Serve, open_pool: OpenPool) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, far past the high-water mark
    server = await serve(keep_alive(ok(body)))
    pool = open_pool(server.url())
    resp = await pool.post("/", b"", {}, first_byte=5)
    conn = resp._conn
    assert conn is not None and conn.transport is not None
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not conn.transport.is_reading():
            break
    assert not conn.transport.is_reading()
    assert conn._buffered < len(body)
    assert await resp.read(idle=5) == body


async def test_idle_connections_are_closed_after_keepalive(serve: Serve, open_pool: OpenPool) -> None:
    server = await serve(keep_alive(ok(b"x")))
    pool = open_pool(server.url(), keepalive=0.1)
    await (await pool.post("/", b"", {}, first_byte=5)).read(idle=5)
    conn = pool._idle[0]
    await asyncio.sleep(0.3)
    assert pool._idle == [] and conn.transport is None  # swept by the timer, socket closed
    await (await pool.post("/", b"", {}, first_byte=5)).read(idle=5)
    assert server.connections == 2


async def test_informational_answers_are_skipped(serve: Serve, open_pool: OpenPool) -> None:
    server = await serve(keep_alive(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + ok(b"real")))
    pool = open_pool(server.url())
    resp = await pool.post("/", b"", {}, first_byte=5)
    assert resp.status == 200 and "link" not in resp.headers and resp.header("link") is None
    assert resp.header("content-length") == "4"
    assert await resp.read(idle=5) == b"real"


async def test_a_header_with_a_line_break_is_refused(serve: Serve, open_pool: OpenPool) -> None:
    server = await serve(keep_alive(ok(b"x")))
    pool = open_pool(server.url())
    with pytest.raises(ValueError, match="line break"):
        await pool.post("/", b"", {"x-a": "b\r\nx-admin: yes"}, first_byte=5)
    assert server.connections == 0


async def test_https_with_a_certificate_from_the_trust_store(serve: Serve, open_pool: OpenPool,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    server = await serve(keep_alive(ok(b"secret")), ssl_context=server_ctx)

    untrusted = open_pool(f"https://localhost:{server.port}")
    with pytest.raises(TransportError, match="SSLCertVerificationError"):
        await untrusted.post("/", b"", {}, first_byte=5)

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # what create_default_context reads as the trust store
    pool = open_pool(f"https://localhost:{server.port}")
    resp = await pool.post("/", b"", {}, first_byte=5)
    assert await resp.read(idle=5) == b"secret"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda status, head, body: b"HTTP/1.1 %d X\r\n%s\r\n%s" % (status, head, body),
              st.integers(100, 999), st.binary(max_size=120), st.binary(max_size=120)),
))
async def test_any_answer_is_a_reply_or_a_transport_error(answer: bytes) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connect_timeout=5)
    try:
        resp = await pool.post("/", b"", {}, first_byte=2)
        assert 200 <= resp.status <= 999
        await resp.read(idle=2)
    except TransportError:
        pass
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
