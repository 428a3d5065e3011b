"""``/admin/upstreams``, ``/admin/config`` and ``/admin/openapi.json``: the gateway itself, as this process sees
it. None of them reads the store, so they answer while the database is away."""

from __future__ import annotations

import orjson
from aiohttp import web

from tollway.api.admin.config_view import config_view
from tollway.api.admin.openapi import DOCUMENT
from tollway.api.admin.views import json_response, services

routes = web.RouteTableDef()
# Serialised once: the document is constant.
_DOCUMENT = orjson.dumps(DOCUMENT)


@routes.get("/upstreams")
async def upstreams(request: web.Request) -> web.Response:
    """The same state /healthz shows: rests and streaks are this replica's (rests told by others included)."""
    s = services(request)
    return json_response({"data": s.health.snapshot(s.table.key_counts())})


@routes.get("/config")
async def config(request: web.Request) -> web.Response:
    return json_response(config_view(services(request).config))


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_DOCUMENT, content_type="application/json")
