"""A fake OpenAI-compatible upstream (``POST /v1/chat/completions``) that records what it receives.

Tollway does not forward client headers to OpenAI-compatible upstreams, so the scenario travels in the
text of the last user message, as ``[scenario:NAME]``:

- none: an echo of that text (streamed as OpenAI does: role chunk, content pieces, finish chunk, then a
  usage-only chunk and ``[DONE]``), with ``USAGE``; with tools and no tool answer yet, a call of ``Bash``
  (else the first tool) with ``{"command": "echo MARKER"}``, MARKER being a ``tollway-marker-HEX`` word of
  the prompt or else its whole text; after a tool answer, text quoting it;
- ``sse:NAME`` / ``json:NAME``: the recorded ``fixtures/openai/NAME.sse`` / ``.json``, byte for byte;
- ``error:STATUS:NAME``: that status with ``fixtures/openai/NAME.json`` and ``retry-after: 3``;
- ``die:N``: N chunks of the echo stream, then the connection drops;
- ``silent:SECONDS``: the role chunk, that long a silence, then the rest of the echo stream.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

FIXTURES = Path(__file__).parent.parent / "fixtures" / "openai"
USAGE = {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59,
         "prompt_tokens_details": {"cached_tokens": 20}}
SCENARIO = re.compile(r"\[scenario:([^\]]+)\]")
# A marker word in a longer prompt (Claude Code adds its own text around the user's).
MARKER = re.compile(r"tollway-marker-[0-9a-f]+")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


@dataclass
class FakeOpenAI:
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    refused_keys: set[str] = field(default_factory=set)
    """Upstream keys answered with 401, as a revoked key would be."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        return app

    def find(self, marker: str) -> dict[str, Any]:
        found = [r for r in self.received if marker in orjson.dumps(r).decode()]
        assert len(found) == 1, f"expected one upstream request with {marker!r}, found {len(found)}"
        return found[0]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if request.headers.get("authorization", "").removeprefix("Bearer ") in self.refused_keys:
            return web.Response(status=401, body=(FIXTURES / "error_401_invalid_api_key.json").read_bytes(),
                                content_type="application/json")
        last_user = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
        match = SCENARIO.search(_text_of(last_user.get("content")))
        kind, _, arg = (match.group(1) if match else "").partition(":")
        if kind == "sse":
            return await self._send(request, [(FIXTURES / f"{arg}.sse").read_bytes()])
        if kind == "json":
            return web.Response(body=(FIXTURES / f"{arg}.json").read_bytes(), content_type="application/json")
        if kind == "error":
            status, _, name = arg.partition(":")
            return web.Response(status=int(status), body=(FIXTURES / f"{name}.json").read_bytes(),
                                content_type="application/json", headers={"retry-after": "3"})
        answer = self._answer(body)
        if not body.get("stream"):
            return web.json_response(answer)
        chunks = self._chunks(answer)
        if kind == "die":
            return await self._send(request, chunks[:int(arg)], drop=True)
        if kind == "silent":
            return await self._send(request, chunks, pause_after_first=float(arg))
        return await self._send(request, chunks)

    @staticmethod
    def _answer(body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        tools = body.get("tools") or []
        message: dict[str, Any] = {"role": "assistant", "content": None}
        last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        answers = [m for m in messages[last_assistant + 1:] if m["role"] == "tool"]
        if answers:
            message["content"] = "The tool said: " + _text_of(answers[-1]["content"])
            finish = "stop"
        elif tools:
            names = [t["function"]["name"] for t in tools]
            name = "Bash" if "Bash" in names else names[0]
            text = _text_of(messages[-1].get("content"))
            found = MARKER.search(text)
            marker = found.group(0) if found else SCENARIO.sub("", text).strip()
            arguments = orjson.dumps({"command": f"echo {marker}"}).decode()
            message["tool_calls"] = [{"id": "call_fake_1", "type": "function",
                                      "function": {"name": name, "arguments": arguments}}]
            finish = "tool_calls"
        else:
            message["content"] = "echo: " + _text_of(messages[-1].get("content"))
            finish = "stop"
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": USAGE}

    @staticmethod
    def _chunks(answer: dict[str, Any]) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": answer["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra}
            return b"data: " + orjson.dumps(data) + b"\n\n"

        message = answer["choices"][0]["message"]
        out = [chunk({"role": "assistant", "content": ""})]
        text = message.get("content") or ""
        out += [chunk({"content": text[i:i + 7]}) for i in range(0, len(text), 7)]
        for i, call in enumerate(message.get("tool_calls") or []):
            args = call["function"]["arguments"]
            out.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 5]}}]})
                    for j in range(0, len(args), 5)]
        out.append(chunk({}, answer["choices"][0]["finish_reason"]))
        usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": answer["model"],
                 "choices": [], "usage": USAGE}
        out.append(b"data: " + orjson.dumps(usage) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return out

    @staticmethod
    async def _send(request: web.Request, chunks: list[bytes], *, drop: bool = False,
                    pause_after_first: float = 0.0) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i, data in enumerate(chunks):
            for j in range(0, len(data), 61):  # cut anywhere, as networks do
                await response.write(data[j:j + 61])
            if i == 0 and pause_after_first:
                await asyncio.sleep(pause_after_first)
        if drop:
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response


class FakeOpenAIServer:
    """The fake, served on a loopback port."""

    def __init__(self) -> None:
        from tests.support.loop_thread import AppServer

        self.fake = FakeOpenAI()
        self.server = AppServer(self.fake.app(), "fake-openai")
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()
