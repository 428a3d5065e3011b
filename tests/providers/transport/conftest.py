"""The pool's tests run on asyncio's own loop and on uvloop, the one `tollway serve` runs: their transports are
different classes with different details (uvloop's is no ``asyncio.Transport`` subclass)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from tests.providers.transport.servers import OpenPool, Reply, Serve, Server
from tollway.providers.transport import Pool


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(reply: Reply, ssl_context: ssl.SSLContext | None = None) -> Server:
        state = Server(port=0)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            number = state.connections
            state.connections += 1
            try:
                await reply(reader, writer, number)
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def open_pool() -> Iterator[OpenPool]:
    pools: list[Pool] = []

    def make(base_url: str, **options: Any) -> Pool:
        pools.append(Pool(base_url, **{"connect_timeout": 5, **options}))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()
