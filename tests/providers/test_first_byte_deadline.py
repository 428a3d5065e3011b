"""The first-byte deadline of an upstream call: its own expiry is an UpstreamTimeout, anyone else's cancel stays a
cancel, and the task's cancel count is left as it was found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tollway.config import UpstreamConfig
from tollway.errors import UpstreamTimeout
from tollway.providers import UpstreamCall, UpstreamReply
from tollway.providers.http import HTTPProvider


class _Provider(HTTPProvider):
    async def send(self, call: UpstreamCall) -> UpstreamReply:
        raise NotImplementedError


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """An upstream that takes the request and never answers."""
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/messages", hang)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _provider(base_url: str, first_byte: float) -> HTTPProvider:
    provider = _Provider(UpstreamConfig(name="silent", kind="anthropic", base_url=base_url,
                                        timeout_first_byte=first_byte))
    await provider.start()
    return provider


async def test_an_upstream_silent_past_the_deadline_is_a_timeout(silent_upstream: str) -> None:
    provider = await _provider(silent_upstream, 0.05)
    try:
        with pytest.raises(UpstreamTimeout, match="did not answer in time"):
            await provider.post("/v1/messages", b"{}", {})
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
    finally:
        await provider.close()


async def test_a_cancel_before_the_deadline_stays_a_cancel(silent_upstream: str) -> None:
    provider = await _provider(silent_upstream, 600)
    try:
        call = asyncio.create_task(provider.post("/v1/messages", b"{}", {}))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelling() == 1  # the caller's cancel, not taken back by the deadline
    finally:
        await provider.close()

