"""Conversation history that Anthropic would refuse, made acceptable before it is sent there.

A conversation can move between upstreams: Claude Code's ``/model`` switch, or a model routed to an
OpenAI-compatible server and later to Anthropic. Thinking blocks that came from a translated upstream
carry Tollway's synthetic signature (``tollway1:...``), which Anthropic rejects ("Invalid `signature` in
`thinking` block"). They are dropped, with any empty thinking block. If that leaves the last assistant
turn of a tool loop (a turn with ``tool_use``) without thinking while thinking is on, Anthropic would
refuse the request too ("Expected `thinking` ... but found ..."), so thinking is turned off for that one
request.
"""

from __future__ import annotations

from typing import Any

SYNTHETIC_PREFIX = "tollway1:"
MARKER = b'"signature":"' + SYNTHETIC_PREFIX.encode()


def needs_sanitizing(body: bytes) -> bool:
    """A cheap test on the raw bytes, so clean requests are never parsed again."""
    return MARKER in body


def _foreign(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return not block.get("thinking") or (isinstance(signature, str) and signature.startswith(SYNTHETIC_PREFIX))


def drop_foreign_thinking(payload: dict[str, Any]) -> bool:
    """Remove synthetic-signed and empty thinking blocks in place; True if anything changed."""
    changed = False
    last_assistant_lost_thinking = False
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return False
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        kept = [b for b in content if not _foreign(b)]
        if len(kept) != len(content):
            changed = True
            kinds = {b.get("type") for b in kept if isinstance(b, dict)}
            # A turn left empty would be refused (every message needs content), and removing it would
            # break the turn order, so it keeps a short placeholder.
            message["content"] = kept or [{"type": "text", "text": "(thinking omitted)"}]
            if i == _last_assistant(messages) and "tool_use" in kinds and not kinds & {"thinking",
                                                                                        "redacted_thinking"}:
                last_assistant_lost_thinking = True
    thinking = payload.get("thinking")
    if last_assistant_lost_thinking and isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        payload["thinking"] = {"type": "disabled"}
    return changed


def _last_assistant(messages: list[Any]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "assistant":
            return i
    return -1
