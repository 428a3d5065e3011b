"""``tollway serve``: the startup banner, the first key, and the aiohttp server on uvloop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shlex
import sys

from aiohttp import web

from tollway.accounting.keys import new_account, new_key
from tollway.api.app import create_app
from tollway.config import Config
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
    for u in config.upstreams:
        where = "built-in, answers in-process" if u.kind == "mock" else u.base_url
        lines.append(f"  upstream: {u.name} ({u.kind}) {where}")
    lines.append(f"  models:   {len(config.models)} ({', '.join(m.name for m in config.models[:3])}"
                 f"{', ...' if len(config.models) > 3 else ''})")
    if config.uses_mock:
        lines += ["", "  MOCK UPSTREAM: no ANTHROPIC_API_KEY and no config file, so answers come from Tollway's",
                  "  built-in mock, not from a model. Set ANTHROPIC_API_KEY or write a tollway.toml for real ones."]
    if secret is not None:
        body = '{"model":"claude-sonnet-4-6","max_tokens":256,"messages":[{"role":"user","content":"Hello"}]}'
        lines += ["", "  A first key was created (shown once, keep it):", f"    {secret}", "",
                  "  Try it:",
                  f"    curl {url}/v1/messages -H 'x-api-key: {secret}' -H 'anthropic-version: 2023-06-01' "
                  f"-H 'content-type: application/json' -d {shlex.quote(body)}",
                  "", f"  Claude Code: ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY={secret} claude"]
    else:
        lines += ["", "  Keys exist already: `tollway keys list`, or make one with `tollway keys create --name NAME`."]
    return "\n".join(lines)


def serve(config: Config, host: str | None = None, port: int | None = None) -> int:
    server = dataclasses.replace(config.server, host=host or config.server.host,
                                 port=config.server.port if port is None else port)
    config = dataclasses.replace(config, server=server)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional on platforms that lack it
        pass
    secret = asyncio.run(_first_key(config))
    print(banner(config, secret), flush=True)
    # handler_cancellation: a client that hangs up cancels its handler, which closes the upstream call.
    web.run_app(create_app(config), host=server.host, port=server.port, shutdown_timeout=server.shutdown_timeout,
                handler_cancellation=True, access_log=None, print=None)
    return 0
