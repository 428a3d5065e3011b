"""A whole Chat Completions answer, as an Anthropic message; and the pieces the stream translator shares.

Blocks come in Anthropic's order: thinking, text, then one ``tool_use`` per tool call. No block is ever
empty or blank: Claude Code stores what it gets and replays it, and Anthropic refuses a blank text block on
every later turn. Usage is split the Anthropic way, so ``input_tokens`` + ``cache_read_input_tokens`` +
``cache_creation_input_tokens`` is the upstream's ``prompt_tokens``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from tollway.errors import UpstreamUnavailable
from tollway.protocol.sanitize import SYNTHETIC_PREFIX
from tollway.protocol.usage import Usage, estimate_tokens
from tollway.providers.openai.errors import map_upstream_error
from tollway.providers.openai.names import ToolNames, inbound_id

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}
_CLOSERS = {"{": "}", "[": "]"}
# How many cut points a repair tries, from the end, before it gives up.
_REPAIR_CUTS = 16


def synthetic_signature(thinking: str) -> str:
    """The signature given to a thinking block that came from an OpenAI-compatible upstream.

    Those upstreams sign nothing, but Claude Code drops thinking that has no ``signature_delta``. The value is
    ``"tollway1:"`` and 32 hex digits of the text's SHA-256: the same text always gets the same signature
    (streamed or not), and the prefix lets a later request bound for Anthropic recognise the block as not
    Anthropic's and drop it, since Anthropic refuses a thinking block whose signature it did not make.
    """
    digest = hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()
    return SYNTHETIC_PREFIX + digest[:32]


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _first_count(*values: object) -> int:
    for value in values:
        if count := _count(value):
            return count
    return 0


def usage_from_openai(raw: object) -> Usage:
    """Anthropic usage from an OpenAI ``usage`` object: cached and cache-written tokens are not input tokens.

    Cache reads are ``prompt_tokens_details.cached_tokens`` (DeepSeek: ``prompt_cache_hit_tokens``); cache
    writes, where an upstream reports them, ``cache_write_tokens`` (OpenRouter) or ``cache_creation_tokens``.
    """
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    prompt = _count(raw.get("prompt_tokens"))
    cached = _first_count(details.get("cached_tokens"), raw.get("prompt_cache_hit_tokens"))
    written = _first_count(details.get("cache_write_tokens"), details.get("cache_creation_tokens"),
                           raw.get("cache_write_tokens"), raw.get("cache_creation_tokens"))
    return Usage(input_tokens=max(0, prompt - cached - written), output_tokens=_count(raw.get("completion_tokens")),
                 cache_creation_input_tokens=written, cache_read_input_tokens=cached, cache_creation_5m=written)


def usage_json(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens}


def stop_reason(finish_reason: object, *, tool_used: bool, refused: bool, stop_sequence: str | None = None) -> str:
    """Anthropic's ``stop_reason`` for an OpenAI ``finish_reason``.

    A reply cut by the token limit stays ``max_tokens`` even when it holds a tool call, as Anthropic itself
    answers: the call's input may be cut short and must not be run. Otherwise any tool call makes it
    ``tool_use`` (backends such as Ollama and llama.cpp say ``stop``), and ``tool_use`` is never given
    without a tool_use block, since clients then wait for a call that is not there.
    """
    if finish_reason == "length":
        return "max_tokens"
    if refused or finish_reason == "content_filter":
        return "refusal"
    if tool_used:
        return "tool_use"
    if stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def matched_stop_sequence(choice: dict[str, Any]) -> str | None:
    """The stop string that ended the reply, where the upstream names it (vLLM's ``choice.stop_reason``)."""
    matched = choice.get("stop_reason")
    if choice.get("finish_reason") == "stop" and isinstance(matched, str) and matched:
        return matched
    return None


def split_content(content: object) -> tuple[str, str]:
    """(text, reasoning) of a ``content`` field: a string, or a list of parts (Mistral sends thinking parts)."""
    if isinstance(content, str):
        return content, ""
    if not isinstance(content, list):
        return "", ""
    text: list[str] = []
    reasoning: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            reasoning.append(inner if isinstance(inner, str) else split_content(inner)[0])
    return "".join(text), "".join(reasoning)


def reasoning_of(message: dict[str, Any]) -> str:
    """``reasoning_content`` (DeepSeek, vLLM, llama.cpp) or else ``reasoning`` (Ollama, OpenRouter, Groq)."""
    for field in ("reasoning_content", "reasoning"):
        value = message.get(field)
        if isinstance(value, str) and value:
            return value
    return ""


def arguments_text(arguments: object) -> str:
    """A tool call's arguments as JSON text; some servers send an object instead of a string."""
    if isinstance(arguments, str):
        return arguments
    if isinstance(arguments, dict):
        return orjson.dumps(arguments).decode()
    return ""


def parse_arguments(arguments: object) -> dict[str, Any]:
    """A tool_use ``input`` from a call's arguments: always an object, ``{}`` when nothing can be made of them.

    Weak models send JSON with trailing garbage, cut short, or encoded twice; each gets a repair before
    giving up. A value that is not an object becomes ``{}``, since Claude Code rejects it anyway.
    """
    if isinstance(arguments, dict):
        return arguments
    text = arguments_text(arguments).strip()
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = repair_json(text)
    if isinstance(value, str):
        # Encoded twice: '"{\"a\": 1}"'.
        inner = value.strip()
        try:
            value = orjson.loads(inner) if inner.startswith("{") else None
        except orjson.JSONDecodeError:
            value = repair_json(inner)
    return value if isinstance(value, dict) else {}


def repair_json(text: str) -> object:
    """The JSON object at the start of ``text``, with trailing garbage dropped or a cut-off end closed.

    Returns None when no repair parses. Closing a cut-off text closes an open string and the open brackets;
    when that does not parse (a half-written key or literal), the last unfinished member is dropped, then
    the one before, up to a few times.
    """
    start = text.find("{")
    if start < 0:
        return None
    text = text[start:]
    try:
        _, end = json.JSONDecoder().raw_decode(text)
        # orjson parses the kept part again: it refuses lone surrogates, which could not be sent on.
        return orjson.loads(text[:end])
    except ValueError:
        pass
    stack: list[str] = []
    # (length of the prefix to keep, the brackets open there) at each comma and opening bracket.
    cuts: list[tuple[int, tuple[str, ...]]] = []
    in_string = escaped = False
    for pos, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
            cuts.append((pos + 1, tuple(stack)))
        elif char in "}]":
            if not stack or stack[-1] != char:
                return None
            stack.pop()
        elif char == ",":
            cuts.append((pos, tuple(stack)))
    tail = text[:-1] if escaped else text
    candidates = [tail + '"' if in_string else tail]
    candidates[0] = candidates[0].rstrip().rstrip(",") + "".join(reversed(stack))
    candidates += [text[:keep] + "".join(reversed(open_)) for keep, open_ in reversed(cuts[-_REPAIR_CUTS:])]
    for candidate in candidates:
        try:
            return orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
    return None


def to_anthropic_message(chat: dict[str, Any], *, model: str, names: ToolNames, message_id: str,
                         max_output: int | None = None) -> tuple[dict[str, Any], Usage]:
    """The Anthropic message for a ``chat.completion`` body, and its usage.

    ``model`` is the client's model name, which the answer carries. A 200 body that holds only an ``error``
    (OpenRouter does this) raises the error it describes.
    """
    choices = chat.get("choices")
    choice = next((c for c in choices if isinstance(c, dict)), None) if isinstance(choices, list) else None
    if choice is None:
        if chat.get("error") is not None:
            error = chat["error"]
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and 400 <= code <= 599 else 502
            raise map_upstream_error(status, orjson.dumps(chat), {}, "")
        raise UpstreamUnavailable("the upstream answered without a choice")
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    text, content_reasoning = split_content(message.get("content"))
    refusal = message.get("refusal")
    refusal = refusal if isinstance(refusal, str) else ""
    reasoning = reasoning_of(message) or content_reasoning
    content: list[dict[str, Any]] = []
    if reasoning.strip():
        content.append({"type": "thinking", "thinking": reasoning, "signature": synthetic_signature(reasoning)})
    if (text + refusal).strip():
        content.append({"type": "text", "text": text + refusal})
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict):
        calls = [{"function": legacy}]
    for position, call in enumerate(calls):
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        call_id = call.get("id")
        content.append({
            "type": "tool_use",
            "id": inbound_id(call_id if isinstance(call_id, str) else None, f"{message_id}:{position}"),
            "name": names.inbound(name if isinstance(name, str) else ""),
            "input": parse_arguments(function.get("arguments")),
        })
    usage = usage_from_openai(chat.get("usage"))
    if not isinstance(chat.get("usage"), dict):
        # No usage from the upstream: the output is billed at an estimate from its length, as in a stream.
        arguments = [c["function"].get("arguments") for c in calls if isinstance(c.get("function"), dict)]
        usage.output_tokens = estimate_tokens(len(reasoning) + len(text) + len(refusal) + sum(
            len(a) for a in arguments if isinstance(a, str)))
        if max_output is not None:
            usage.output_tokens = min(usage.output_tokens, max_output)  # no model writes more
    matched = matched_stop_sequence(choice)
    reason = stop_reason(choice.get("finish_reason"), tool_used=bool(calls), refused=bool(refusal.strip()),
                         stop_sequence=matched)
    answer = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": matched if reason == "stop_sequence" else None,
        "usage": usage_json(usage),
    }
    return answer, usage
