"""Relay to a server that speaks the Anthropic Messages API: Anthropic itself or a compatible endpoint.

The body goes out as the client sent it (only ``model`` may have been rewritten before), headers too,
less credentials and hop-by-hop ones. Streams come back byte for byte; a tap reads the few events that
carry usage on the way through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import orjson

from tollway.errors import UpstreamError, UpstreamUnavailable
from tollway.protocol.sanitize import drop_foreign_thinking, needs_sanitizing
from tollway.protocol.usage import StreamTap, usage_from_message
from tollway.providers.base import UpstreamCall, UpstreamReply
from tollway.providers.http import HTTPProvider
from tollway.providers.transport import Response

log = logging.getLogger("tollway.providers.anthropic")
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


class AnthropicProvider(HTTPProvider):
    async def send(self, call: UpstreamCall) -> UpstreamReply:
        path = PATHS[call.endpoint] + ("?" + call.query if call.query else "")
        headers = dict(call.headers)
        headers["x-api-key"] = call.api_key
        headers["content-type"] = "application/json"
        headers["accept-encoding"] = "identity"
        data = call.body
        if needs_sanitizing(data):
            # A copy: the payload is shared with later tries, which must see the client's own history.
            clean = orjson.loads(data)
            if drop_foreign_thinking(clean):
                data = orjson.dumps(clean)
        resp = await self.post(path, data, headers)
        reply_headers = {k: v for k in REPLY_HEADERS if (v := resp.header(k)) is not None}
        if call.stream and resp.status == 200:
            reply = UpstreamReply(status=200, headers=reply_headers)
            cap = call.payload.get("max_tokens")
            reply.chunks = self._relay(resp, reply, cap if isinstance(cap, int) else None)
            return reply
        body = await self.read_body(resp)
        reply = UpstreamReply(status=resp.status, headers=reply_headers, body=body, first_byte_at=time.monotonic())
        if resp.status == 200:
            if call.endpoint == "messages":
                reply.usage = usage_from_message(body)
            reply.completed = True
            return reply
        if resp.status in (401, 403):
            # About the gateway's own key, not the client's: no client is told its key is wrong, and only
            # this key rests.
            log.error("upstream %r refused Tollway's credentials (HTTP %d)", self.name, resp.status)
            raise UpstreamUnavailable(f"upstream {self.name!r} refused the gateway's credentials", key_fault=True)
        reply.upstream_error = error_type_of(body)
        if reply.upstream_error is None:
            # An answer in no Anthropic shape (an HTML page from a proxy) gets one.
            retry = {k: v for k, v in reply_headers.items() if k != "content-type"}
            raise UpstreamUnavailable(f"upstream {self.name!r} answered HTTP {resp.status}", headers=retry)
        # Anthropic-shaped errors go to the client unchanged: Claude Code recovers by their wording.
        return reply

    async def _relay(self, resp: Response, reply: UpstreamReply,
                     cap: int | None) -> AsyncIterator[bytes]:
        tap = StreamTap(cap)
        reply.usage = tap.usage
        drained = False
        try:
            while chunk := await self.read_chunk(resp):
                if reply.first_byte_at is None:
                    reply.first_byte_at = time.monotonic()
                tap.feed(chunk)
                yield chunk
            drained = True
            tap.close()
            if not tap.completed and tap.error is None:
                raise UpstreamUnavailable(f"upstream {self.name!r} ended the stream before message_stop")
        except UpstreamError as exc:
            reply.upstream_error = exc.error_type
            raise
        finally:
            # A stream left unread is closed, not released: dropping the connection is what cancels the
            # upstream's work when the client has gone.
            self.finish(resp, drained)
            tap.cut()
            reply.completed = tap.completed
            if tap.error is not None:
                kind = tap.error.get("type")
                reply.upstream_error = kind if isinstance(kind, str) else "api_error"
