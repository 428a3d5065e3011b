"""What every upstream reached over HTTP shares: one connection pool, timeouts, and errors mapped once.

Transport failures become `UpstreamError`s here and nowhere else, so each wire protocol (Anthropic,
OpenAI) deals only in bytes and statuses.
"""

from __future__ import annotations

from tollway.errors import UpstreamTimeout, UpstreamUnavailable
from tollway.providers.base import Provider
from tollway.providers.transport import Pool, Response, TransportError, TransportTimeout


class HTTPProvider(Provider):
    _pool: Pool | None = None

    async def start(self) -> None:
        self._pool = Pool(self.config.base_url, connect_timeout=self.config.timeout_connect, proxy=self.config.proxy)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send; return once the status line and headers are in (the first-byte timeout covers this).

        Tollway reads usage from the bytes it relays, so each wire protocol asks for them uncompressed
        (``accept-encoding: identity``). Upstream cookies are not kept: they are not a client's to replay on
        another client's request (client cookies are not forwarded either)."""
        assert self._pool is not None, "provider used before start()"
        try:
            return await self._pool.post(path, body, headers, self.config.timeout_first_byte)
        except TransportTimeout:
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
        except TransportError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} is unreachable ({exc})") from None

    async def read_body(self, resp: Response) -> bytes:
        try:
            return await resp.read(self.config.timeout_idle)
        except TransportTimeout:
            raise UpstreamTimeout(f"upstream {self.name!r} stalled while answering") from None
        except TransportError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} failed while answering ({exc})") from None

    async def read_chunk(self, resp: Response) -> bytes:
        """The next bytes of the body, b"" at its end. Safe to cancel: unread bytes stay buffered."""
        try:
            return await resp.read_chunk(self.config.timeout_idle)
        except TransportTimeout:
            raise UpstreamTimeout(f"upstream {self.name!r} went silent mid-stream") from None
        except TransportError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} broke off the stream ({exc})") from None

    @staticmethod
    def finish(resp: Response, drained: bool) -> None:
        if drained:
            resp.release()
        else:
            resp.close()
