"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: admit, relay, meter.

Each request is checked in the order the real API checks it (size, key, body, model, permission),
relayed to its upstream, and leaves exactly one usage row, whether it succeeded, failed or was cut.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tollway.accounting.keys import may_use
from tollway.accounting.pricing import cost_nanousd
from tollway.accounting.wallet import Hold
from tollway.api.auth import authenticate
from tollway.api.context import SERVICES, Services
from tollway.api.errors import error_payload
from tollway.api.exchange import AiohttpExchange, Exchange
from tollway.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TollwayError,
    UpstreamError,
)
from tollway.limits import policy as limit_policy
from tollway.limits.policy import Admission
from tollway.protocol.catalog import Prices
from tollway.protocol.sse import encode_event
from tollway.protocol.usage import Usage
from tollway.protocol.validate import validate_request
from tollway.providers import UpstreamReply
from tollway.routing.router import Request as RouterRequest
from tollway.routing.router import Try
from tollway.routing.table import Route
from tollway.store import KeyRecord, UsageRecord
from tollway.telemetry import Capture, request_line

log = logging.getLogger("tollway.messages")

DEFAULT_VERSION = "2023-06-01"
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
# Never forwarded: the hop's own framing and handshakes (expect was answered here, and the body is read
# whole before the upstream sees the request), the client's credentials (the upstream gets its own key),
# and accept-encoding, since Tollway must read the bytes it relays. Headers the client's Connection header
# names are this hop's too (RFC 9110, 7.6.1).
DROPPED_HEADERS = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive",
    "proxy-connection", "proxy-authorization", "te", "trailer", "upgrade", "expect", "authorization",
    "x-api-key", "accept-encoding", "cookie",
})
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})
"""What nearly every client sends: Connection names no header then."""
CLIENT_CLOSED = 499

@dataclass(slots=True)
class Outcome:
    """What the usage row will say; filled in as the request goes."""

    endpoint: str
    started: float
    status: int = 500
    error_type: str | None = "api_error"
    key: KeyRecord | None = None
    model: str | None = None
    upstream: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    usage: Usage | None = None
    first_byte_at: float | None = None
    tries: list[Try] | None = None
    admission: Admission | None = None
    """What the request took from its key's rate limits."""
    hold: Hold | None = None
    """What it reserved from its key's and account's money."""
    prices: Prices | None = None
    request_body: bytes | None = None
    """Kept only for a key whose bodies the request log carries, as is ``capture``."""
    capture: Capture | None = None

    def fail(self, status: int, error_type: str | None) -> None:
        self.status, self.error_type = status, error_type

    def row(self, request_id: str) -> UsageRecord:
        u = self.usage or Usage()
        now = time.monotonic()
        return UsageRecord(
            request_id=request_id, created_at=datetime.now(UTC), key_id=self.key.id if self.key else None,
            endpoint=self.endpoint, model=_storable(self.model), upstream=self.upstream,
            upstream_model=self.upstream_model, stream=self.stream, status=self.status, error_type=self.error_type,
            input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            cache_creation_input_tokens=u.cache_creation_input_tokens,
            cache_read_input_tokens=u.cache_read_input_tokens,
            cache_creation_5m=u.cache_creation_5m, cache_creation_1h=u.cache_creation_1h,
            latency_ms=(now - self.started) * 1000,
            ttfb_ms=None if self.first_byte_at is None else (self.first_byte_at - self.started) * 1000,
            # One try is the row itself; more are listed, so a failover can be audited.
            tries=orjson.dumps([t.as_json() for t in self.tries]).decode() if self.tries and (
                len(self.tries) > 1 or self.status >= 400) else None,
            cost_nanousd=None if self.prices is None else cost_nanousd(self.prices, u),
        )


def _storable(model: str | None) -> str | None:
    # The model name is the one value of a usage row a client writes. PostgreSQL refuses NUL in text, and a
    # batch it refuses is kept and tried again: one such name would stop every usage row and ledger entry
    # after it from being written.
    if model is None or "\x00" not in model:
        return model
    return model.replace("\x00", "\ufffd")


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    connection = headers.get("connection")
    dropped = DROPPED_HEADERS if connection is None or connection.lower() in _PLAIN_CONNECTION else \
        DROPPED_HEADERS.union(token.strip().lower() for token in connection.split(","))
    for name, value in headers.items():
        lower = name.lower()
        if lower in dropped:
            continue
        # A repeated header (anthropic-beta may be) travels as one comma-joined value.
        out[lower] = f"{out[lower]},{value}" if lower in out else value
    version = out.get("anthropic-version")
    if version is None:
        out["anthropic-version"] = DEFAULT_VERSION
    elif not _VERSION.fullmatch(version):
        raise InvalidRequest(f'anthropic-version: "{version}" is not a valid version')
    return out


async def read_json(ex: Exchange, limit: int) -> tuple[bytes, Any]:
    body = await ex.read(limit)
    try:
        return body, orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None


async def admit(ex: Exchange, services: Services, outcome: Outcome) -> tuple[Route, RouterRequest]:
    """Check the request in the real API's order; return its route and what the router needs."""
    outcome.key = key = await authenticate(ex.headers, services.keys)
    body, payload = await read_json(ex, services.config.server.max_body_bytes)
    if key.log_bodies and services.access_log is not None:
        outcome.request_body, outcome.capture = body, Capture()
    headers = forwarded_headers(ex.headers)
    counting = outcome.endpoint == "count_tokens"
    model = payload.get("model") if isinstance(payload, dict) else None
    route = services.table.routes.get(model) if isinstance(model, str) else None
    info = validate_request(payload, count_tokens=counting, betas=headers.get("anthropic-beta", ""),
                            max_tokens_cap=route.max_tokens if route else None)
    outcome.model, outcome.stream = info.model, info.stream and not counting
    if route is None:
        raise NotFound(f"model: {info.model}")
    if not may_use(key, info.model):
        raise PermissionDenied(f"This API key is not allowed to use the model {info.model}.")
    if not counting and services.limit_rules.applies(key, info.model):
        outcome.admission = await limit_policy.admit(services.limiter, key, len(body), info.max_tokens,
                                                     model=info.model, rules=services.limit_rules)
    if not counting and services.funds.limited(key):
        outcome.hold = await services.funds.reserve(ex.request_id, key, route.ceiling, len(body), info.fetches,
                                                    info.max_tokens, route.max_input_tokens, info.images)
    return route, RouterRequest(endpoint=outcome.endpoint, body=body, payload=payload, headers=headers,
                                query=ex.query, client_model=info.model, stream=outcome.stream)


async def handle_messages(request: web.Request) -> web.StreamResponse:
    return await _on_aiohttp(request, "messages")


async def handle_count_tokens(request: web.Request) -> web.StreamResponse:
    return await _on_aiohttp(request, "count_tokens")


async def _on_aiohttp(request: web.Request, endpoint: str) -> web.StreamResponse:
    ex = AiohttpExchange(request)
    await serve(ex, request.app[SERVICES], endpoint)
    assert ex.response is not None
    return ex.response


async def serve(ex: Exchange, services: Services, endpoint: str) -> None:
    """Answer one request to ``endpoint`` (``messages`` or ``count_tokens``); a `TollwayError` raised before
    the answer has begun is for the caller to render."""
    request_id = ex.request_id
    outcome = Outcome(endpoint=endpoint, started=time.monotonic())
    reply: UpstreamReply | None = None
    try:
        route, routed = await admit(ex, services, outcome)
        outcome.tries = routed.tries
        reply, candidate = await services.router.send(route, routed)
        provider = candidate.provider
        outcome.upstream, outcome.upstream_model = provider.name, candidate.target.model
        outcome.prices = candidate.target.prices
        outcome.usage, outcome.first_byte_at = reply.usage, reply.first_byte_at
        if reply.chunks is not None:
            await _stream(ex, services, reply, outcome)
            return
        outcome.fail(reply.status, reply.upstream_error if reply.status >= 400 else None)
        if outcome.capture is not None:
            outcome.capture.add(reply.body)
        headers = dict(reply.headers)
        if outcome.admission is not None:
            headers.update(outcome.admission.headers)
        headers["request-id"] = request_id
        ex.answer(reply.status, headers, reply.body)
    except TollwayError as exc:
        outcome.fail(exc.status, exc.error_type)
        if outcome.admission is not None:
            exc.headers = {**outcome.admission.headers, **exc.headers}
        raise
    except orjson.JSONEncodeError as exc:
        # orjson reads JSON nested up to 1,024 levels but writes only about 250: a body Tollway must
        # re-encode (a rewritten model, a failover, a translation) can be too deep to send on. Anything else
        # this catches is a TypeError (orjson's error is one), a bug that must not pass for the client's.
        if "Recursion limit" not in str(exc):
            raise
        error = InvalidRequest("The request body is nested too deeply.")
        outcome.fail(error.status, error.error_type)
        raise error from None
    except asyncio.CancelledError:
        outcome.fail(CLIENT_CLOSED, "client_closed")
        raise
    finally:
        if reply is not None:
            await reply.aclose()
            outcome.usage, outcome.first_byte_at = reply.usage, reply.first_byte_at
        elif outcome.tries:
            outcome.upstream = outcome.tries[-1].upstream
        # Money and the usage row first, and in memory: a rate limiter that does I/O (Redis) failing or being
        # cancelled below must not leave a reserve held or a request unrecorded.
        row = outcome.row(request_id)
        if outcome.hold is not None:
            await services.funds.settle(outcome.hold, row.cost_nanousd or 0)
        services.ledger.record(row)
        _observe(ex, services, outcome, row)
        if outcome.admission is not None:
            await limit_policy.settle(services.limiter, outcome.admission,
                                      row.input_tokens + row.cache_creation_input_tokens, row.output_tokens)


async def _stream(ex: Exchange, services: Services, reply: UpstreamReply, outcome: Outcome) -> None:
    assert reply.chunks is not None
    request_id = ex.request_id
    # From here on the status line is sent: failures can only be told in the stream itself.
    await ex.open_stream({
        "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
        "request-id": request_id, **{k: v for k, v in reply.headers.items() if k != "content-type"},
        **(outcome.admission.headers if outcome.admission is not None else {}),
    })
    outcome.fail(200, None)
    services.open_streams += 1
    capture = outcome.capture
    try:
        send = ex.send
        if reply.head:
            if capture is not None:
                capture.add(reply.head)
            await send(reply.head)
        if capture is None:
            async for chunk in reply.chunks:
                await send(chunk)
        else:
            async for chunk in reply.chunks:
                capture.add(chunk)
                await send(chunk)
        if reply.upstream_error is not None:
            outcome.fail(200, reply.upstream_error)
    except UpstreamError as exc:
        log.warning("stream %s cut: %s", request_id, exc.message)
        outcome.fail(200, exc.error_type)
        frame = encode_event("error", error_payload(exc.error_type, exc.message, request_id))
        if not await _write_or_leave(ex, frame, outcome):
            return
    except ConnectionResetError:
        outcome.fail(CLIENT_CLOSED, "client_closed")
        return
    finally:
        services.open_streams -= 1
    await _write_or_leave(ex, b"", outcome, eof=True)


def _observe(ex: Exchange, services: Services, outcome: Outcome, row: UsageRecord) -> None:
    """Count the request for ``/metrics`` and write its log line."""
    tries = outcome.tries
    services.stats.record(row, [t.upstream for t in tries] if tries and len(tries) > 1 else ())
    access_log = services.access_log
    if access_log is None:
        return
    capture = outcome.capture
    access_log.write(request_line(
        row, client=ex.remote, user_agent=ex.headers.get("user-agent"),
        key_name=outcome.key.name if outcome.key else None, tries=len(tries) if tries else 0,
        request_body=outcome.request_body, response_body=None if capture is None else capture.body(),
        response_size=None if capture is None else capture.size))


async def _write_or_leave(ex: Exchange, data: bytes, outcome: Outcome, *, eof: bool = False) -> bool:
    """Write to a client that may have gone; False (and the row says so) if it has."""
    try:
        if eof:
            await ex.end_stream()
        else:
            await ex.send(data)
    except ConnectionResetError:
        outcome.fail(CLIENT_CLOSED, "client_closed")
        return False
    return True
