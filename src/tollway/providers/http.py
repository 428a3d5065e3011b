"""What every upstream reached over HTTP shares: one connection pool, timeouts, and errors mapped once.

Transport failures become `UpstreamError`s here and nowhere else, so each wire protocol (Anthropic,
OpenAI) deals only in bytes and statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import aiohttp
from aiohttp import hdrs

from tollway.errors import UpstreamTimeout, UpstreamUnavailable
from tollway.providers.base import Provider


class _UpstreamRequest(aiohttp.ClientRequest):
    """aiohttp's request with ``Accept`` as its only automatic header, as ``skip_auto_headers=("User-Agent",
    "Accept-Encoding")`` would leave it. Tollway reads usage from the bytes, so it asks for them uncompressed
    (each wire protocol sends ``accept-encoding: identity``), and the client's own user-agent, if any, is
    forwarded. Done here rather than with skip_auto_headers, which builds and merges two header dicts per
    request."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        if hdrs.ACCEPT not in self.headers:
            self.headers[hdrs.ACCEPT] = "*/*"


class HTTPProvider(Provider):
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        # Bytes are relayed as they come, uncompressed (see _UpstreamRequest). No cookie jar: upstream cookies
        # are not a client's to replay on another client's request (client cookies are not forwarded either),
        # and the default jar filters every request through its store. No sock_read here:
        # aiohttp would start it while waiting for the status line too, cutting first_byte down to idle.
        # The idle timer is set on each connection once its headers are in (see post).
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            request_class=_UpstreamRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeout_connect),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """Send; return once the status line and headers are in (the first-byte timeout covers this)."""
        assert self._session is not None, "provider used before start()"
        task = asyncio.current_task()
        assert task is not None
        # The first-byte deadline, done as asyncio.timeout does it (a timer cancels this task; the cancel is
        # ours if uncancelling it leaves the count it had) without its context-manager object and coroutines:
        # callgrind counts 27,000 instructions a use for asyncio.timeout, 7,000 for this.
        cancelling = task.cancelling()
        expired = uncancelled = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.config.timeout_first_byte, expire)
        try:
            resp = await self._session.post(self.config.base_url + path, data=body, headers=headers)
        except asyncio.CancelledError:
            if expired:
                uncancelled = True
                if task.uncancel() <= cancelling:
                    raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
            raise
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} is unreachable ({type(exc).__name__})") from None
        finally:
            timer.cancel()
            if expired and not uncancelled:
                task.uncancel()  # the deadline passed as the answer came: its cancel is ours to take back
        # From here on, silence is bounded by idle. aiohttp's own per-connection read timer does it, reset
        # on every packet: no timer of Tollway's per read.
        connection = resp.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = self.config.timeout_idle
            # Setting it only stores it: the timer would start with the next packet, so an upstream that
            # sends its headers and then nothing would never time out. Not once the body has ended: the
            # timer would then fire on an idle pooled connection.
            if not resp.content.is_eof():
                connection.protocol.start_timeout()
        return resp

    async def read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} stalled while answering") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} failed while answering "
                                      f"({type(exc).__name__})") from None
        finally:
            resp.release()

    async def read_chunk(self, resp: aiohttp.ClientResponse) -> bytes:
        """The next bytes of the body, b"" at its end. Safe to cancel: unread bytes stay buffered."""
        try:
            return await resp.content.readany()
        except aiohttp.ServerTimeoutError:
            # aiohttp's idle timer (set in post). A caller's own asyncio.timeout never lands here: it
            # reaches this frame as cancellation and becomes TimeoutError only where the caller opened it.
            raise UpstreamTimeout(f"upstream {self.name!r} went silent mid-stream") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} broke off the stream "
                                      f"({type(exc).__name__})") from None

    @staticmethod
    def finish(resp: aiohttp.ClientResponse, drained: bool) -> None:
        if drained:
            resp.release()
        else:
            resp.close()
