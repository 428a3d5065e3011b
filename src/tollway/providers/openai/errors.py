"""Errors from an OpenAI-compatible upstream, as the Anthropic errors a client acts on.

The status decides the class (and so the Anthropic status and ``error.type``); the message is the upstream's
own, never with a key in it. Two rewrites matter to Claude Code:

* a context overflow becomes ``prompt is too long: N tokens > M maximum``, the wording on which Claude Code
  compacts the conversation;
* a 401 or 403 means the upstream refused the *gateway's* key, so the client gets a 502, not an
  authentication error that would send its user to check a key that is fine.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from tollway.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    TollwayError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

_MAX_MESSAGE = 1000
_ANTHROPIC_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error",
})
# OpenAI-style ``code`` and ``type`` values seen in error objects, by the Anthropic type they mean.
_CODE_TYPES = {
    "context_length_exceeded": "invalid_request_error",
    "exceed_context_size_error": "invalid_request_error",
    "tool_use_failed": "invalid_request_error",
    "invalid_request_error": "invalid_request_error",
    "model_not_found": "not_found_error",
    "rate_limit_exceeded": "rate_limit_error",
    "tokens": "rate_limit_error",
    "requests": "rate_limit_error",
    "server_error": "api_error",
    "overloaded": "overloaded_error",
    "server_overloaded": "overloaded_error",
    "service_unavailable": "overloaded_error",
    "timeout": "timeout_error",
}
_SECRETS = (
    # "Incorrect API key provided: sk-abc...": whatever follows names the key.
    re.compile(r"(?i)(api[ _-]?key[^:\n]{0,20}:\s*)\S+"),
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(r"()\b(?:sk|rk|pk|gsk|xai|csk|nvapi)[-_][A-Za-z0-9_\-.]{8,}"),
)
_CONTEXT = re.compile(r"(?i)context[ _-]?(?:length|size|window)|prompt is too long|input is too long")
_PROMPT_SIZE = (
    re.compile(r"resulted in (\d+) tokens"),  # OpenAI
    re.compile(r"requested (?:about )?(\d+) tokens"),  # OpenAI, DeepSeek, OpenRouter
    re.compile(r"request has (\d+) (?:input )?tokens"),  # vLLM
    re.compile(r"request \((\d+) tokens\)"),  # llama.cpp
)
_CONTEXT_SIZE = (
    re.compile(r"maximum context length is (\d+)"),
    re.compile(r"context size \((\d+) tokens\)"),
    re.compile(r"context (?:length|window) (?:is|of) (\d+)"),
)


def scrub(text: str) -> str:
    """``text`` with anything that looks like a credential replaced."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


def error_message(error: object) -> str | None:
    """The human message of an error object (``{"message": ...}``) or string, scrubbed; None when it has none."""
    text: str | None = None
    if isinstance(error, str):
        text = error
    elif isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str):
            text = message
            metadata = error.get("metadata")
            raw = metadata.get("raw") if isinstance(metadata, dict) else None
            if isinstance(raw, str) and raw.strip() and raw.strip() != message:
                # OpenRouter: "Provider returned error", and the provider's own words in metadata.raw.
                text = f"{message}: {raw.strip()}"
    if text is None or not text.strip():
        return None
    text = scrub(text.strip())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _body_error(body: bytes) -> tuple[dict[str, Any], str | None]:
    """The error object of a body (``{}`` if none) and its message."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        # A plain-text answer is worth passing on; an HTML error page is not.
        return {}, None if not text or text.startswith("<") else error_message(text)
    if not isinstance(parsed, dict):
        return {}, None
    error = parsed.get("error")
    if isinstance(error, dict):
        return error, error_message(error)
    if isinstance(error, str):
        return {}, error_message(error)
    detail = parsed.get("detail")
    if isinstance(detail, list):
        # FastAPI's 422: [{"loc": [...], "msg": ...}, ...]
        parts = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail if isinstance(d, dict)]
        detail = "; ".join(parts)
    return parsed, error_message(parsed.get("message")) or error_message(detail)


def _first_int(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        if match := pattern.search(text):
            return int(match.group(1))
    return None


def _context_overflow(error: dict[str, Any], message: str | None) -> str | None:
    """``prompt is too long: ...`` when the upstream says the prompt does not fit its context; else None."""
    code = error.get("code")
    kind = error.get("type")
    overflow = code in ("context_length_exceeded", "exceed_context_size_error") or kind == "exceed_context_size_error"
    if not overflow and not (message and _CONTEXT.search(message)):
        return None
    text = message or "the prompt does not fit the upstream model's context"
    prompt, limit = error.get("n_prompt_tokens"), error.get("n_ctx")  # llama.cpp sends both as numbers
    if not (isinstance(prompt, int) and isinstance(limit, int)):
        prompt, limit = _first_int(_PROMPT_SIZE, text), _first_int(_CONTEXT_SIZE, text)
    if prompt is not None and limit is not None and prompt > limit:
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return f"prompt is too long: {text}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``retry-after`` (and ``retry-after-ms``) for the client's SDK, from either header the upstream sent."""
    seconds, millis = _header(headers, "retry-after"), _header(headers, "retry-after-ms")
    out: dict[str, str] = {}
    if millis is not None:
        out["retry-after-ms"] = millis.strip()
        if seconds is None:
            with contextlib.suppress(ValueError):
                seconds = str(max(1, math.ceil(float(millis) / 1000)))
    if seconds is not None:
        out["retry-after"] = seconds.strip()
    return out


def _class_for_status(status: int) -> type[TollwayError]:
    if status in (401, 402, 403):
        # The upstream refused the gateway's own key or account: nothing the client can fix.
        return UpstreamUnavailable
    known: dict[int, type[TollwayError]] = {
        404: NotFound, 408: UpstreamTimeout, 413: RequestTooLarge, 429: RateLimited,
        502: Overloaded, 503: Overloaded, 504: UpstreamTimeout,
    }
    if status in known:
        return known[status]
    if 400 <= status < 500:
        return InvalidRequest
    if 500 <= status < 600:
        return InternalError
    return UpstreamUnavailable


def map_upstream_error(status: int, body: bytes, headers: Mapping[str, str], upstream: str) -> TollwayError:
    """The Tollway error to answer with when an OpenAI-compatible upstream answered ``status`` with ``body``.

    ``upstream`` names the upstream (in messages that cannot come from its body); an empty name reads
    "the upstream".
    """
    who = f"upstream {upstream!r}" if upstream else "the upstream"
    error, message = _body_error(body)
    if status in (401, 402, 403):
        # About the gateway's own key or account, and the body may quote part of the key: its words are
        # not passed on, and only that key rests.
        return UpstreamUnavailable(f"{who} refused the gateway's credentials", key_fault=True)
    if status in (400, 413, 422) and (overflow := _context_overflow(error, message)) is not None:
        return InvalidRequest(overflow)
    cls = _class_for_status(status)
    if status == 429 and error.get("code") == "insufficient_quota":
        # The gateway's account is out of credit: retrying that key will not help, another key may.
        return UpstreamUnavailable(f"{who} says the gateway's account is out of quota", key_fault=True)
    text = message or f"{who} answered HTTP {status}"
    retry = _retry_headers(headers) if status == 429 or status >= 500 else {}
    return cls(text, headers=retry or None)


def stream_error_type(error: object) -> str:
    """The Anthropic ``error.type`` for an error an upstream reported inside a stream.

    A status (``status_code``, ``status``, or a numeric ``code``) decides as it would for an HTTP answer;
    otherwise the ``code`` or ``type`` string; otherwise ``api_error``.
    """
    if not isinstance(error, dict):
        return "api_error"
    for field in ("status_code", "status", "code"):
        value = error.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return _class_for_status(value).error_type
    for field in ("code", "type"):
        value = error.get(field)
        if isinstance(value, str):
            if value in _CODE_TYPES:
                return _CODE_TYPES[value]
            if value in _ANTHROPIC_TYPES:
                return value
    return "api_error"
