"""``GET /v1/models`` and ``GET /v1/models/{id}``: the configured models a key may use, in Anthropic's shape."""

from __future__ import annotations

import orjson
from aiohttp import web

from tollway.accounting.keys import may_use
from tollway.api.auth import authenticate
from tollway.api.context import SERVICES
from tollway.errors import InvalidRequest, NotFound
from tollway.routing.table import Route


def model_object(route: Route) -> dict[str, object]:
    obj: dict[str, object] = {"type": "model", "id": route.name, "display_name": route.display_name,
                              "created_at": route.created_at}
    if route.max_tokens is not None:
        obj["max_tokens"] = route.max_tokens
    if route.max_input_tokens is not None:
        obj["max_input_tokens"] = route.max_input_tokens
    return obj


def _json(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit: Input should be between 1 and 1000")
    return limit


async def list_models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    key = await authenticate(request.headers, services.keys)
    limit = _limit(request.query.get("limit"))
    after, before = request.query.get("after_id"), request.query.get("before_id")
    # Newest first, as Anthropic lists them; the name breaks ties so pages are stable.
    routes = sorted((r for r in services.table.routes.values() if may_use(key, r.name)),
                    key=lambda r: (r.created_at, r.name), reverse=True)
    ids = [r.name for r in routes]
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
        page, has_more = routes[start:start + limit], start + limit < len(routes)
    elif before is not None:
        end = ids.index(before) if before in ids else 0
        page, has_more = routes[max(0, end - limit):end], end - limit > 0
    else:
        page, has_more = routes[:limit], limit < len(routes)
    return _json({"data": [model_object(r) for r in page], "has_more": has_more,
                  "first_id": page[0].name if page else None, "last_id": page[-1].name if page else None})


async def get_model(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    key = await authenticate(request.headers, services.keys)
    model_id = request.match_info["model_id"]
    route = services.table.routes.get(model_id)
    if route is None or not may_use(key, model_id):
        raise NotFound(f"model: {model_id}")
    return _json(model_object(route))
