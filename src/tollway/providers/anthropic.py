"""Relay to a server that speaks the Anthropic Messages API: Anthropic itself or a compatible endpoint.

The body goes out as the client sent it (only ``model`` may have been rewritten before), headers too,
less credentials and hop-by-hop ones. Streams come back byte for byte; a tap reads the few events that
carry usage on the way through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson

from tollway.errors import UpstreamTimeout, UpstreamUnavailable
from tollway.protocol.usage import StreamTap, usage_from_message
from tollway.providers.base import Provider, UpstreamCall, UpstreamReply

PATHS = {"messages": "/v1/messages", "count_tokens": "/v1/messages/count_tokens"}
# Passed back to the client so its SDK retries as the upstream intended.
REPLY_HEADERS = ("content-type", "retry-after", "retry-after-ms", "x-should-retry")


def error_type_of(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        kind = parsed["error"].get("type")
        return kind if isinstance(kind, str) else None
    return None


class AnthropicProvider(Provider):
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        # Tollway reads usage from the bytes, so it asks for them uncompressed (identity) and relays
        # them as they come; the client's own accept-encoding is about its hop, not this one.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeout_connect,
                                          sock_read=self.config.timeout_idle),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, call: UpstreamCall) -> UpstreamReply:
        assert self._session is not None, "provider used before start()"
        url = self.config.base_url + PATHS[call.endpoint]
        if call.query:
            url += "?" + call.query
        headers = dict(call.headers)
        headers["x-api-key"] = call.api_key
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"
        try:
            async with asyncio.timeout(self.config.timeout_first_byte):
                resp = await self._session.post(url, data=call.body, headers=headers)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} is unreachable ({type(exc).__name__})") from None
        reply_headers = {k: resp.headers[k] for k in REPLY_HEADERS if k in resp.headers}
        if call.stream and resp.status == 200:
            reply = UpstreamReply(status=200, headers=reply_headers)
            reply.chunks = self._relay(resp, reply)
            return reply
        try:
            body = await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} stalled while answering") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} failed while answering "
                                      f"({type(exc).__name__})") from None
        finally:
            resp.release()
        reply = UpstreamReply(status=resp.status, headers=reply_headers, body=body, first_byte_at=time.monotonic())
        if resp.status == 200:
            if call.endpoint == "messages":
                reply.usage = usage_from_message(body)
            reply.completed = True
        else:
            reply.upstream_error = error_type_of(body)
        return reply

    async def _relay(self, resp: aiohttp.ClientResponse, reply: UpstreamReply) -> AsyncIterator[bytes]:
        tap = StreamTap()
        reply.usage = tap.usage
        drained = False
        try:
            async for chunk in resp.content.iter_any():
                if reply.first_byte_at is None:
                    reply.first_byte_at = time.monotonic()
                tap.feed(chunk)
                yield chunk
            drained = True
            tap.close()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} went silent mid-stream") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {self.name!r} broke off the stream "
                                      f"({type(exc).__name__})") from None
        finally:
            # A stream left unread is closed, not released: dropping the connection is what cancels the
            # upstream's work when the client has gone. A drained one goes back to the pool.
            if drained:
                resp.release()
            else:
                resp.close()
            reply.completed = tap.completed
            if tap.error is not None:
                kind = tap.error.get("type")
                reply.upstream_error = kind if isinstance(kind, str) else "api_error"
        if not tap.completed and tap.error is None:
            raise UpstreamUnavailable(f"upstream {self.name!r} ended the stream before message_stop")
