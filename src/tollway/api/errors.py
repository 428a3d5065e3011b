"""The one place errors become HTTP responses, and where each response gets its ``request-id``.

A `TollwayError` is rendered as Anthropic renders errors. aiohttp's own HTTP exceptions (unknown
path, wrong method, body too large) are mapped onto the tree first. Anything else is a bug: it is
logged with its traceback and the client gets a plain ``api_error`` that reveals nothing.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from tollway.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    TollwayError,
)

TOO_LARGE = "Request exceeds the maximum allowed number of bytes."
"""The 413's message, as Anthropic words it."""
REQUEST_ID = web.RequestKey("request_id", str)
STREAM_STARTED = web.RequestKey("stream_started", bool)
log = logging.getLogger("tollway.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestIds:
    """Unique request ids without a system call each: a random per-process prefix and a counter.

    The prefix keeps ids unique across processes and restarts; they need not be unguessable.
    """

    def __init__(self) -> None:
        self._prefix = "req_" + secrets.token_hex(6)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


REQUEST_IDS = web.AppKey("request_ids", RequestIds)


def error_payload(error_type: str, message: str, request_id: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def error_parts(exc: TollwayError, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer an error gets, on whichever server."""
    headers = {"request-id": request_id, "content-type": "application/json"}
    # Errors the client caused will fail the same way again; saying so stops SDK retries.
    if exc.status < 500 and exc.status not in (408, 409, 429):
        headers["x-should-retry"] = "false"
    headers.update(exc.headers)
    return exc.status, headers, orjson.dumps(error_payload(exc.error_type, exc.message, request_id))


def error_response(exc: TollwayError, request_id: str) -> web.Response:
    status, headers, body = error_parts(exc, request_id)
    return web.Response(status=status, body=body, headers=headers)


def failure(exc: Exception, request_id: str, what: str) -> TollwayError:
    """What an exception out of a handler is for the client: itself if it is one of the tree, else (a bug,
    logged here with its traceback, ``what`` naming the request) an ``api_error`` that reveals nothing."""
    if isinstance(exc, TollwayError):
        return exc
    if isinstance(exc, web.HTTPException):
        return from_http_exception(exc)
    log.error("unhandled error in %s (request-id %s)", what, request_id, exc_info=exc)
    return InternalError("Internal server error")


def from_http_exception(exc: web.HTTPException) -> TollwayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return RequestTooLarge(TOO_LARGE)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method {exc.method} is not allowed here.")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Not found")
    if exc.status < 500:
        return InvalidRequest(exc.reason)
    return InternalError("Internal server error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.app[REQUEST_IDS]()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except Exception as exc:
        error = failure(exc, request_id, f"{request.method} {request.path}")
        if request.get(STREAM_STARTED):
            # The status line and part of a stream are out: a second response would corrupt it, so the
            # connection is dropped instead.
            raise
        return error_response(error, request_id)
    if not response.prepared:
        response.headers["request-id"] = request_id
    return response
