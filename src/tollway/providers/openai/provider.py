"""Upstreams that speak OpenAI Chat Completions, behind the Anthropic Messages API.

The request is translated (`request.py`), sent to ``{base_url}/chat/completions``, and the answer
translated back: whole (`response.py`) or event by event (`stream.py`). While a streaming upstream is
silent (a long prefill, reasoning it does not stream), Tollway sends ``ping`` events so clients with
idle watchdogs (Claude Code aborts after 300 s without bytes) keep waiting.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import orjson

from tollway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from tollway.providers.base import UpstreamCall, UpstreamReply
from tollway.providers.http import HTTPProvider
from tollway.providers.openai.errors import map_upstream_error
from tollway.providers.openai.names import ToolNames
from tollway.providers.openai.request import to_chat_request
from tollway.providers.openai.response import to_anthropic_message
from tollway.providers.openai.stream import StreamTranslator
from tollway.providers.openai.tokens import estimate_input_tokens
from tollway.providers.transport import Response
from tollway.upstream_options import OpenAIOptions

JSON = {"content-type": "application/json"}


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


class OpenAIProvider(HTTPProvider):
    ping_interval: float = 10.0
    """Seconds of upstream silence after which a ``ping`` event goes to the client."""

    @property
    def options(self) -> OpenAIOptions:
        return self.config.openai or OpenAIOptions()

    async def send(self, call: UpstreamCall) -> UpstreamReply:
        if call.endpoint == "count_tokens":
            # Tokenizing a large prompt takes milliseconds: off the event loop, so streams keep flowing.
            count = await asyncio.to_thread(estimate_input_tokens, call.payload)
            return UpstreamReply(status=200, headers=JSON, body=orjson.dumps({"input_tokens": count}),
                                 first_byte_at=time.monotonic(), completed=True)
        names = ToolNames()
        chat = to_chat_request(call.payload, model=call.model, options=self.options, stream=call.stream,
                               names=names)
        headers = {"authorization": f"Bearer {call.api_key}", "content-type": "application/json",
                   "accept-encoding": "identity"}
        resp = await self.post("/chat/completions", orjson.dumps(chat), headers)
        if resp.status != 200:
            body = await self.read_body(resp)
            raise map_upstream_error(resp.status, body, resp.headers, self.name)
        cap = call.payload.get("max_tokens")
        max_output = cap if isinstance(cap, int) else None
        if call.stream:
            translator = StreamTranslator(model=call.client_model, names=names, message_id=new_message_id(),
                                          input_estimate=max(1, len(call.body) // 4), max_output=max_output)
            reply = UpstreamReply(status=200, headers={"content-type": "text/event-stream"},
                                  usage=translator.usage)
            reply.chunks = self._translate(resp, translator, reply)
            return reply
        body = await self.read_body(resp)
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"upstream {self.name!r} answered with a body that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamUnavailable(f"upstream {self.name!r} answered in no Chat Completions shape")
        message, usage = to_anthropic_message(answer, model=call.client_model, names=names,
                                              message_id=new_message_id(), max_output=max_output)
        return UpstreamReply(status=200, headers=JSON, body=orjson.dumps(message), usage=usage,
                             first_byte_at=time.monotonic(), completed=True)

    async def start(self) -> None:
        await super().start()
        # Load the tokenizer's vocabulary now, not on the first count_tokens request.
        await asyncio.to_thread(estimate_input_tokens, {"messages": []})

    async def _translate(self, resp: Response, translator: StreamTranslator,
                         reply: UpstreamReply) -> AsyncIterator[bytes]:
        # Nothing is sent before the upstream's first bytes (or a ping): until then the router may still
        # fail over to another target.
        drained = False
        last_data = time.monotonic()
        try:
            while True:
                try:
                    # A timer, not a task per read; an expired wait loses no bytes, they stay buffered.
                    async with asyncio.timeout(self.ping_interval):
                        chunk = await self.read_chunk(resp)
                except TimeoutError:
                    if time.monotonic() - last_data > self.config.timeout_idle:
                        raise UpstreamTimeout(f"upstream {self.name!r} went silent mid-stream") from None
                    yield translator.ping()
                    continue
                if not chunk:
                    drained = True
                    break
                last_data = time.monotonic()
                if reply.first_byte_at is None:
                    reply.first_byte_at = last_data
                # One write for what one upstream read completes: as prompt as the upstream, far fewer
                # system calls than a write per event.
                frames = translator.feed(chunk)
                if frames:
                    yield b"".join(frames)
                if translator.error_type is not None:
                    break
            if translator.error_type is None:
                yield b"".join(translator.finish())
        except UpstreamError as exc:
            reply.upstream_error = exc.error_type
            raise
        finally:
            self.finish(resp, drained)
            translator.estimate_output()
            reply.usage = translator.usage
            reply.completed = translator.completed
            if translator.error_type is not None:
                reply.upstream_error = translator.error_type
