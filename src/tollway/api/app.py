"""The aiohttp application: routes, middleware, and the life of the shared services."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tollway.accounting.funds import Funds
from tollway.accounting.keys import KeyCache
from tollway.accounting.ledger import UsageLedger
from tollway.accounting.wallet import SeedSource
from tollway.api.admin import mount_admin
from tollway.api.admin.auth import FailedAttempts
from tollway.api.context import SERVICES, Services
from tollway.api.dashboard import dashboard_app
from tollway.api.errors import REQUEST_IDS, RequestIds, error_middleware
from tollway.api.exchange import Exchange
from tollway.api.front import FrontSite
from tollway.api.messages import handle_count_tokens, handle_messages, serve
from tollway.api.metrics import collect, metrics_handler
from tollway.api.models import get_model, list_models
from tollway.api.worker_metrics import WorkerSlot, publisher
from tollway.config import Config
from tollway.limits import Limiter, LimitRules, MemoryLimiter
from tollway.routing.health import HealthBoard
from tollway.routing.router import Router
from tollway.routing.table import RoutingTable
from tollway.store import open_store
from tollway.telemetry import AccessLog, RequestStats, open_sink

if TYPE_CHECKING:
    from tollway.accounting.shared_wallet import SharedWallet

log = logging.getLogger("tollway")


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    shared = getattr(services.limiter, "is_shared", None)
    limits = {"backend": "memory"} if shared is None else {
        "backend": "redis", "shared": shared, "outages": getattr(services.limiter, "outages", 0)}
    body = {"status": "ok", "worker": os.getpid(), "open_streams": services.open_streams,
            "usage_pending": services.ledger.pending,
            "limits": limits, "balances": _balances(services), "store": services.ledger.health(),
            "upstreams": services.health.snapshot(services.table.key_counts())}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _balances(services: Services) -> dict[str, object]:
    shared = services.funds.shared
    if shared is None:
        return {"backend": "memory"}
    return {"backend": "redis", "outages": shared.outages, "unsettled": shared.unsettled}


def create_app(config: Config, worker: WorkerSlot | None = None) -> web.Application:
    """The gateway; ``worker`` when it is one of ``serve --workers``' processes."""
    # aiohttp enforces the body limit while reading, so an oversized body is refused without being held.
    app = web.Application(middlewares=[error_middleware], client_max_size=config.server.max_body_bytes)
    app[REQUEST_IDS] = RequestIds()
    app.router.add_post("/v1/messages", handle_messages)
    app.router.add_post("/v1/messages/count_tokens", handle_count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(worker))
    limits = config.limits

    def dashboard(digest: bytes, attempts: FailedAttempts) -> web.Application:
        return dashboard_app(digest, attempts, redis_url=limits.url, redis_prefix=limits.prefix,
                             redis_timeout=limits.timeout)

    mount_admin(app, config, beside={"/dashboard": dashboard})
    app.cleanup_ctx.append(_lifespan(config))
    if worker is not None:  # after the services exist; stopped before they are
        app.cleanup_ctx.append(publisher(worker, lambda: list(collect(app[SERVICES]))))
    return app


def front_site(runner: web.AppRunner, config: Config, host: str | None, port: int | None, *,
               reuse_port: bool | None = None, grace: float | None = None) -> FrontSite:
    """The client port: ``/v1/messages`` and count_tokens served by Tollway's front, the rest handed to aiohttp
    (`tollway.api.front`). After ``runner.setup()``, which has made the services. ``grace``: seconds a stop waits
    for requests under way (default ``server.shutdown_timeout``)."""
    app = runner.app
    services = app[SERVICES]

    def handle(ex: Exchange, endpoint: str) -> Awaitable[None]:
        return serve(ex, services, endpoint)

    return FrontSite(runner, handle, app[REQUEST_IDS], config.server.max_body_bytes, host, port,
                     reuse_port=reuse_port, shutdown_timeout=config.server.shutdown_timeout if grace is None else grace)


def _limiter(config: Config) -> Limiter:
    if config.limits.url is None:
        return MemoryLimiter()
    # Imported only when configured: the Redis client adds about 0.1 s to a start.
    from tollway.limits.fallback import FallbackLimiter
    from tollway.limits.redis import RedisLimiter

    shared = RedisLimiter.from_url(config.limits.url, prefix=config.limits.prefix, lease=config.limits.lease,
                                   timeout=config.limits.timeout)
    return FallbackLimiter(shared, retry_delay=config.limits.retry_delay)


def _shared_wallet(config: Config, ledger: UsageLedger) -> Callable[[SeedSource], SharedWallet] | None:
    url = config.limits.url
    if url is None:
        return None
    from tollway.accounting.shared_wallet import SharedWallet
    from tollway.limits.redis import connect

    # No owner is seeded after Redis lost its state until every replica has flushed what it spent against
    # the old state: two flushes, and a margin for a settle that waits for Redis to answer again.
    grace = 2 * config.storage.flush_interval + 2.0

    def make(seed: SeedSource) -> SharedWallet:
        return SharedWallet(connect(url, timeout=config.limits.timeout), seed, ledger.entry,
                            prefix=config.limits.prefix, grace=grace, owns_client=True)

    return make


def _lifespan(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        store = open_store(config.storage)
        # SQLite (one machine) is brought up to date on start; PostgreSQL, shared by replicas, only by
        # `tollway migrate`: a replica finding an older schema refuses to serve.
        await store.ensure_current(auto_migrate=store.dialect == "sqlite")
        keys = KeyCache(store, config.storage.key_refresh_interval)
        ledger = UsageLedger(store, config.storage.flush_interval)
        table = RoutingTable(config)
        funds = Funds(store, ledger.entry, config.storage.key_refresh_interval, shared=_shared_wallet(config, ledger),
                      backlog=ledger.pending_entries)
        await keys.start()
        await ledger.start()
        await funds.start()
        await table.start()
        access_log = None
        if config.log.requests != "off":
            sink, owned = open_sink(config.log.requests)
            access_log = AccessLog(sink, owns_sink=owned)
            await access_log.start()
        health = HealthBoard()
        limiter = _limiter(config)
        bus = None
        if config.limits.url is not None:
            from tollway.pubsub import CHANGES, Bus
            from tollway.routing.rest_broadcast import RestBroadcast

            bus = Bus(config.limits.url, config.limits.prefix, config.limits.timeout)
            health.on_rest = RestBroadcast(bus, health).publish

            def changed(_: object) -> None:
                keys.reload_soon()
                funds.reload_soon()

            bus.on(CHANGES, changed)
            await bus.start()
        app[SERVICES] = Services(config=config, store=store, keys=keys, ledger=ledger, table=table, health=health,
                                 router=Router(table, health), limiter=limiter,
                                 limit_rules=LimitRules.from_config(config), funds=funds, bus=bus,
                                 stats=RequestStats(table.routes.__contains__), access_log=access_log)
        # What startup built (config, SQLAlchemy, alembic modules) lives as long as the process: moving it
        # out of the collector's reach keeps each full collection on the request path short. No collection
        # first: started by `tollway` (tollway.__main__), the collector has been off and finds about 3,000
        # objects of garbage among 75,000 here, a full pass that cost a start 20-60 ms.
        gc.freeze()
        # A young-generation collection every 700 new objects comes every two or three requests; one every
        # 50,000 costs the same per object but runs far less often, and measured here took 5-10% off the
        # CPU of a request (more off one that is rate limited, which makes more small objects).
        gc.set_threshold(50_000, 20, 20)
        gc.enable()
        try:
            yield
        finally:
            # Handlers have finished (or been cut) by now: every usage row is queued, so flush last.
            await table.close()
            await funds.close()
            await keys.close()
            close = getattr(limiter, "close", None)  # after the handlers: their settles are done
            if close is not None:
                await close()
            if bus is not None:
                await bus.close()
            await ledger.close()
            if access_log is not None:
                await access_log.close()
            await store.close()
            log.info("usage flushed; %d rows dropped in this run", ledger.dropped)

    return lifespan
