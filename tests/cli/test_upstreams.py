"""``tollway upstreams``: a gateway that cannot be reached is an error, not an empty table."""

from __future__ import annotations

import socket

from tests.cli.conftest import CLI


def test_unreachable_gateway_exits_1(cli: CLI) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ran = cli.main("upstreams", "--url", f"http://127.0.0.1:{port}", code=1)
    assert ran.stdout == ""
    assert f"cannot read http://127.0.0.1:{port}/healthz" in ran.stderr
