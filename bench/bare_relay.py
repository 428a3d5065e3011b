"""The yardstick: the least an aiohttp relay for POST /v1/messages can do.

No auth, no parsing, no metering; bytes in, bytes out over one shared ClientSession. Whatever the
gateway costs beyond this is the price of its features.

    python bench/bare_relay.py --port 18081 --upstream http://127.0.0.1:18080
    python bench/bare_relay.py --port 18081 --upstream http://127.0.0.1:18080 --client tollway

``--client tollway`` forwards through Tollway's own upstream client (`tollway.providers.transport.Pool`)
instead of aiohttp's ClientSession: the same relay on the transport Tollway uses, so that what Tollway's
features cost can also be read apart from what its transport saves (issue 7's yardstick stays the default).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

from tollway.providers.transport import Pool

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
POOL = web.AppKey("pool", Pool)

# What the upstream needs to understand the request; everything else (host, length, hop-by-hop) is
# rebuilt by the client library.
_FORWARD = ("Content-Type", "anthropic-version", "anthropic-beta", "x-api-key", "Authorization")


async def messages(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {name: request.headers[name] for name in _FORWARD if name in request.headers}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].post(url, data=body, headers=headers) as upstream:
        ctype = upstream.headers.get("Content-Type", "application/json")
        if ctype.startswith("text/event-stream"):
            resp = web.StreamResponse(status=upstream.status, headers={"Content-Type": ctype})
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        data = await upstream.read()
        return web.Response(status=upstream.status, body=data, headers={"Content-Type": ctype})


async def messages_on_pool(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {name: request.headers[name] for name in _FORWARD if name in request.headers}
    upstream = await request.app[POOL].post(request.path_qs, body, headers, first_byte=300)
    ctype = upstream.header("content-type") or "application/json"
    if ctype.startswith("text/event-stream"):
        resp = web.StreamResponse(status=upstream.status, headers={"Content-Type": ctype})
        await resp.prepare(request)
        while chunk := await upstream.read_chunk(idle=300):
            await resp.write(chunk)
        upstream.release()
        await resp.write_eof()
        return resp
    data = await upstream.read(idle=300)
    return web.Response(status=upstream.status, body=data, headers={"Content-Type": ctype})


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    # limit=0: the bench decides concurrency, the relay must never queue behind its own pool.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        app[SESSION] = session
        yield


async def serve(port: int, upstream: str, client: str = "aiohttp") -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    if client == "tollway":
        app[POOL] = Pool(app[UPSTREAM], connect_timeout=10)
        app.router.add_post("/v1/messages", messages_on_pool)
    else:
        app.cleanup_ctx.append(_session_ctx)
        app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare relay ({client} client) listening on http://127.0.0.1:{port} -> {upstream}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:18080")
    parser.add_argument("--client", choices=("aiohttp", "tollway"), default="aiohttp",
                        help="aiohttp's ClientSession (the yardstick) or Tollway's transport")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.client))


if __name__ == "__main__":
    main()
