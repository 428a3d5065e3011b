"""One request to the messages endpoints and its answer, whichever server carries it.

The handlers in `tollway.api.messages` read a request and write an answer through an `Exchange`: Tollway's own
front (`tollway.api.front`) carries the requests it serves itself, and `AiohttpExchange` the ones aiohttp
serves (a request the front hands over: chunked, ``Expect``, over the size limit). The handlers are the same
either way; so are their errors, which both render with `tollway.api.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from tollway.api.errors import REQUEST_ID, STREAM_STARTED, TOO_LARGE
from tollway.errors import RequestTooLarge


class Exchange(Protocol):
    @property
    def request_id(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up without regard to case; a repeated header is one entry each time in ``items()``."""

    @property
    def remote(self) -> str | None: ...

    @property
    def query(self) -> str: ...

    async def read(self, limit: int) -> bytes:
        """The body, or `RequestTooLarge` past ``limit`` bytes."""

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """The whole answer at once."""

    async def open_stream(self, headers: dict[str, str]) -> None:
        """A 200 answer whose body follows by `send`; from here on a failure can only be told in the stream."""

    async def send(self, chunk: bytes) -> None:
        """A piece of the stream; ConnectionResetError when the client has gone."""

    async def end_stream(self) -> None:
        """The stream's end; ConnectionResetError when the client has gone."""


class AiohttpExchange:
    """An exchange carried by aiohttp: the answer becomes the handler's response."""

    __slots__ = ("_request", "headers", "query", "remote", "request_id", "response")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.request_id = request[REQUEST_ID]
        self.headers = request.headers
        self.remote = request.remote
        self.query = request.query_string
        self.response: web.StreamResponse | None = None

    async def read(self, limit: int) -> bytes:
        request = self._request
        if request.content_length is not None and request.content_length > limit:
            raise RequestTooLarge(TOO_LARGE)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            # A chunked or compressed body gives no length up front; aiohttp stops it at the limit.
            raise RequestTooLarge(TOO_LARGE) from None

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.response = web.Response(status=status, body=body, headers=headers)

    async def open_stream(self, headers: dict[str, str]) -> None:
        self.response = response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(self._request)
        self._request[STREAM_STARTED] = True

    async def send(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end_stream(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

