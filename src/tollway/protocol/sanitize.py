"""Conversation history that Anthropic would refuse, made acceptable before it is sent there.

Thinking signatures belong to the account that made them. A conversation can move: Claude Code's
``/model`` switch, a model routed to an OpenAI-compatible server and later to Anthropic, a failover from
one upstream account to another. Thinking blocks that came from a translated upstream carry Tollway's
synthetic signature (``tollway1:...``), which Anthropic always rejects ("Invalid `signature` in `thinking`
block"); blocks signed by another account are rejected the same way. Such blocks are dropped, with any
empty thinking block. If that leaves the last assistant turn of a tool loop (a turn with ``tool_use``)
without thinking while thinking is on, Anthropic would refuse the request too ("Expected `thinking` ...
but found ..."), so thinking is turned off for that one request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SYNTHETIC_PREFIX = "tollway1:"
_SYNTHETIC_BYTES = SYNTHETIC_PREFIX.encode()
_THINKING = ("thinking", "redacted_thinking")


def needs_sanitizing(body: bytes) -> bool:
    """A cheap test on the raw bytes, so clean requests are never parsed again."""
    return _SYNTHETIC_BYTES in body


def has_signed_thinking(body: bytes) -> bool:
    """Whether the body may hold thinking tied to an account (a cheap, over-inclusive byte test)."""
    return b"signature" in body or b"redacted_thinking" in body


def _synthetic_or_empty(block: dict[str, Any]) -> bool:
    signature = block.get("signature")
    return block.get("type") == "thinking" and (
        not block.get("thinking") or (isinstance(signature, str) and signature.startswith(SYNTHETIC_PREFIX)))


def _any_thinking(block: dict[str, Any]) -> bool:
    return block.get("type") in _THINKING


def drop_foreign_thinking(payload: dict[str, Any]) -> bool:
    """Remove thinking with a synthetic signature, and empty thinking, in place; True if anything changed."""
    return _drop(payload, _synthetic_or_empty)


def drop_signed_thinking(payload: dict[str, Any]) -> bool:
    """Remove every thinking and redacted-thinking block, in place: for a request going to an account
    other than the one that signed them. True if anything changed."""
    return _drop(payload, _any_thinking)


def _drop(payload: dict[str, Any], unwanted: Callable[[dict[str, Any]], bool]) -> bool:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return False
    last = _last_assistant(messages)
    changed = False
    last_turn_lost_thinking = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        kept = [b for b in content if not (isinstance(b, dict) and unwanted(b))]
        if len(kept) == len(content):
            continue
        changed = True
        # A turn left empty would be refused (every message needs content), and removing it would
        # break the turn order, so it keeps a short placeholder.
        message["content"] = kept or [{"type": "text", "text": "(thinking omitted)"}]
        kinds = {b.get("type") for b in kept if isinstance(b, dict)}
        if i == last and "tool_use" in kinds and not kinds & set(_THINKING):
            last_turn_lost_thinking = True
    thinking = payload.get("thinking")
    if last_turn_lost_thinking and isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        payload["thinking"] = {"type": "disabled"}
    return changed


def _last_assistant(messages: list[Any]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "assistant":
            return i
    return -1
