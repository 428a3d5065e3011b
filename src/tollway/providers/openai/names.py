"""Tool names and tool-call ids that both sides accept.

OpenAI takes function names of at most 64 characters from ``[a-zA-Z0-9_-]`` and tool-call ids of at most
40; Anthropic wants ids from ``[a-zA-Z0-9_-]``. MCP tool names (``mcp__server__tool``) and ids minted by
other upstreams can break either rule. Names are shortened deterministically and restored in answers;
ids are rewritten by a pure function, so the same id maps the same way on every turn of a conversation.
"""

from __future__ import annotations

import hashlib
import re

_VALID_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_VALID_ID = re.compile(r"[a-zA-Z0-9_-]{1,40}")
_ANTHROPIC_ID = re.compile(r"[a-zA-Z0-9_-]+")


def _digest(value: str, length: int) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:length]


class ToolNames:
    """The names sent upstream for one request, and the way back to the client's names."""

    def __init__(self) -> None:
        self._original: dict[str, str] = {}

    def outbound(self, name: str) -> str:
        if _VALID_NAME.fullmatch(name):
            short = name
        else:
            cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:55]
            short = f"{cleaned}_{_digest(name, 8)}"
        self._original[short] = name
        return short

    def inbound(self, name: str) -> str:
        return self._original.get(name, name)


def outbound_id(tool_use_id: str) -> str:
    """A tool-call id OpenAI accepts, the same for the same input."""
    return tool_use_id if _VALID_ID.fullmatch(tool_use_id) else "toolu_" + _digest(tool_use_id, 32)


def inbound_id(call_id: str | None, fallback_seed: str) -> str:
    """A tool_use id Anthropic clients accept; ``fallback_seed`` makes one when the upstream gave none."""
    if call_id and _ANTHROPIC_ID.fullmatch(call_id) and not call_id.isdigit():
        return call_id
    return "toolu_" + _digest(call_id or fallback_seed, 24)
