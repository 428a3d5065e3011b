"""The built-in mock upstream: answers in-process the way the real API would, for demos and load tests.

It is no model. Its text says so, its message ids start with ``msg_mock_``, and the startup banner and
usage rows name it. Answers are deterministic for a given request: an echo of the last user text, a
``tool_use`` of the first tool when tools are offered (unless the turn is answering a tool), and a short
thinking block when thinking is on. Usage is estimated at four bytes a token.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tollway.protocol.sse import encode_event
from tollway.protocol.usage import Usage
from tollway.providers.base import Provider, UpstreamCall, UpstreamReply

NOTICE = "[Tollway mock upstream: no real model is configured.]"
SIGNATURE = "bW9jay1zaWduYXR1cmU="  # base64 of "mock-signature": never valid at a real upstream


def estimate_tokens(data: bytes) -> int:
    return max(1, len(data) // 4)


def _last_user_text(messages: object) -> tuple[str, bool]:
    """The last user turn's text, and whether that turn carries tool results."""
    if not isinstance(messages, list):
        return "", False
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content, False
        texts, answered = [], False
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_result":
                answered = True
                inner = block.get("content")
                if isinstance(inner, str):
                    texts.append(inner)
        return " ".join(texts), answered
    return "", False


class MockAnswer:
    """The whole answer to one request, built once, then rendered as JSON or as SSE."""

    def __init__(self, call: UpstreamCall) -> None:
        p = call.payload
        digest = hashlib.sha256(call.body).hexdigest()
        self.id = "msg_mock_" + digest[:24]
        self.model = call.model
        text, answered = _last_user_text(p.get("messages"))
        max_tokens = p.get("max_tokens")
        budget = max_tokens if isinstance(max_tokens, int) else 1024
        tools = p.get("tools")
        first_tool = tools[0] if isinstance(tools, list) and tools and isinstance(tools[0], dict) else None
        self.blocks: list[dict[str, Any]] = []
        thinking = p.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
            self.blocks.append({"type": "thinking", "thinking": "The user wants a reply; this is the mock.",
                                "signature": SIGNATURE})
        words = f"{NOTICE} You said: {text[:200]}".split()
        self.stop_reason = "end_turn"
        if len(words) > budget:
            words, self.stop_reason = words[:budget], "max_tokens"
        self.blocks.append({"type": "text", "text": " ".join(words)})
        if first_tool is not None and not answered and self.stop_reason == "end_turn":
            name = first_tool.get("name", "tool")
            self.blocks.append({"type": "tool_use", "id": "toolu_mock_" + digest[24:48], "name": name,
                                "input": {}})
            self.stop_reason = "tool_use"
        self.usage = Usage(input_tokens=estimate_tokens(call.body), output_tokens=len(words) + 4 * len(self.blocks))

    def usage_json(self) -> dict[str, Any]:
        u = self.usage
        return {"input_tokens": u.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": u.output_tokens, "service_tier": "standard"}

    def message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": self.blocks, "stop_reason": self.stop_reason, "stop_sequence": None,
                "usage": self.usage_json()}

    def events(self) -> list[bytes]:
        start = self.message() | {"content": [], "stop_reason": None}
        start["usage"] = self.usage_json() | {"output_tokens": 1}
        frames = [encode_event("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(self.blocks):
            events = self._block_events(index, block)
            if index == 0:
                # Where the real API sends its first ping: right after the first block opens.
                events.insert(1, encode_event("ping", {"type": "ping"}))
            frames.extend(events)
        frames.append(encode_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": self.usage_json()}))
        frames.append(encode_event("message_stop", {"type": "message_stop"}))
        return frames

    @staticmethod
    def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
        kind = block["type"]
        if kind == "text":
            empty: dict[str, Any] = {"type": "text", "text": ""}
            words = block["text"].split(" ")
            pieces = [" ".join(words[i:i + 4]) + (" " if i + 4 < len(words) else "") for i in range(0, len(words), 4)]
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
        elif kind == "thinking":
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                      {"type": "signature_delta", "signature": block["signature"]}]
        else:
            empty = block | {"input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}]
        frames = [encode_event("content_block_start",
                               {"type": "content_block_start", "index": index, "content_block": empty})]
        frames.extend(encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": d}) for d in deltas)
        frames.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        return frames


class MockProvider(Provider):
    async def send(self, call: UpstreamCall) -> UpstreamReply:
        headers = {"content-type": "application/json"}
        if call.endpoint == "count_tokens":
            body = orjson.dumps({"input_tokens": estimate_tokens(call.body)})
            return UpstreamReply(status=200, headers=headers, body=body, first_byte_at=time.monotonic(),
                                 completed=True)
        answer = MockAnswer(call)
        if not call.stream:
            return UpstreamReply(status=200, headers=headers, body=orjson.dumps(answer.message()),
                                 usage=answer.usage, first_byte_at=time.monotonic(), completed=True)
        reply = UpstreamReply(status=200, headers={"content-type": "text/event-stream"}, usage=answer.usage)
        reply.chunks = self._stream(answer.events(), reply)
        return reply

    @staticmethod
    async def _stream(frames: list[bytes], reply: UpstreamReply) -> AsyncIterator[bytes]:
        reply.first_byte_at = time.monotonic()
        for frame in frames:
            yield frame
        reply.completed = True
