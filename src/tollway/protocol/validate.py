"""Validation of Messages API request bodies, with the messages the real API gives.

Only the rules Anthropic documents or is seen to enforce (reference section 2) are checked, and only on
the fields it defines. Unknown fields and unknown block or tool types are left alone: clients such as
Claude Code send new ones before any gateway knows them, and the upstream is the judge of those.
Messages follow the API's style: a pydantic-like dotted path, then what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollway.errors import InvalidRequest

THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
ROLES = ("user", "assistant", "system")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING_TYPES = ("enabled", "disabled", "adaptive")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the gateway needs to know of a valid request."""

    model: str
    stream: bool
    max_tokens: int
    fetches: bool = False
    images: int = 0
    """Inline images: each is billed for up to about 1,600 tokens, whatever its size in the body."""
    """Whether the upstream itself brings content in (a URL or Files API source, a server tool, MCP
    servers): such input is not bounded by the body's size."""


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _fail(path: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {message}" if path else message)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _expect(value: object, kind: type | tuple[type, ...], path: str, label: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(path, f"Input should be a valid {label}")


def _number_in(body: dict[str, Any], key: str, low: float, high: float | None, *, integer: bool) -> None:
    if key not in body or body[key] is None:
        return
    value = body[key]
    if not (_is_int(value) if integer else _is_number(value)):
        raise _fail(key, f"Input should be a valid {'integer' if integer else 'number'}")
    if value < low:
        raise _fail(key, f"Input should be greater than or equal to {low:g}")
    if high is not None and value > high:
        raise _fail(key, f"Input should be less than or equal to {high:g}")


def validate_request(body: object, *, count_tokens: bool = False, betas: str = "",
                     max_tokens_cap: int | None = None) -> RequestInfo:
    """Check a parsed body of ``/v1/messages`` (or its ``count_tokens``); raise `InvalidRequest`."""
    if not isinstance(body, dict):
        raise _fail("", f"Input should be a valid dictionary or object to extract fields from, "
                        f"got {_type_name(body)}")
    model = body.get("model")
    if model is None:
        raise _fail("model", "Field required")
    _expect(model, str, "model", "string")

    max_tokens = 0
    if not count_tokens:
        if "max_tokens" not in body:
            raise _fail("max_tokens", "Field required")
        max_tokens = body["max_tokens"]
        if not _is_int(max_tokens):
            raise _fail("max_tokens", "Input should be a valid integer")
        if max_tokens < 1:
            raise _fail("max_tokens", "Input should be greater than or equal to 1")
        if max_tokens_cap is not None and max_tokens > max_tokens_cap:
            raise _fail("", f"max_tokens: {max_tokens} > {max_tokens_cap}, which is the maximum allowed "
                            f"number of output tokens for {model}")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    _expect(stream, bool, "stream", "boolean")

    _number_in(body, "temperature", 0.0, 1.0, integer=False)
    _number_in(body, "top_p", 0.0, 1.0, integer=False)
    _number_in(body, "top_k", 0, None, integer=True)
    _check_stop_sequences(body.get("stop_sequences"))
    _check_metadata(body.get("metadata"))
    _check_system(body.get("system"))
    fetches, images = _check_messages(body.get("messages"))
    tools = body.get("tools")
    fetches = _check_tools(tools) or fetches or body.get("mcp_servers") is not None
    tool_choice = body.get("tool_choice")
    _check_tool_choice(tool_choice)
    _check_thinking(body, max_tokens, count_tokens, betas, bool(tools))
    return RequestInfo(model=model, stream=bool(stream), max_tokens=max_tokens, fetches=fetches, images=images)


def _check_stop_sequences(value: object) -> None:
    if value is None:
        return
    _expect(value, list, "stop_sequences", "list")
    assert isinstance(value, list)
    for i, item in enumerate(value):
        _expect(item, str, f"stop_sequences.{i}", "string")


def _check_metadata(value: object) -> None:
    if value is None:
        return
    _expect(value, dict, "metadata", "dictionary")
    assert isinstance(value, dict)
    user_id = value.get("user_id")
    if user_id is not None:
        _expect(user_id, str, "metadata.user_id", "string")


def _check_system(value: object) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _fail("system", "Input should be a valid string or a list of text blocks")
    for i, block in enumerate(value):
        path = f"system.{i}"
        _expect(block, dict, path, "dictionary")
        assert isinstance(block, dict)
        if block.get("type") != "text":
            raise _fail(f"{path}.type", "Input should be 'text'")
        _expect(block.get("text"), str, f"{path}.text", "string")


def _check_messages(messages: object) -> tuple[bool, int]:
    """Check the messages; say whether one has content the upstream fetches, and count inline images."""
    if messages is None:
        raise _fail("messages", "Field required")
    _expect(messages, list, "messages", "list")
    assert isinstance(messages, list)
    if not messages:
        raise _fail("messages", "List should have at least 1 item after validation, not 0")
    last = len(messages) - 1
    fetches, images = False, 0
    # Paths are written out only for an error: a long conversation has thousands of blocks.
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages.{i}", "Input should be a valid dictionary")
        role = message.get("role")
        if role is None:
            raise _fail(f"messages.{i}.role", "Field required")
        if role not in ROLES:
            raise _fail(f"messages.{i}.role", "Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _fail(f"messages.{i}.content", "Field required")
        content = message["content"]
        final_assistant = i == last and role == "assistant"
        if isinstance(content, str):
            if not content and not final_assistant:
                raise _empty_message(i)
            continue
        if not isinstance(content, list):
            raise _fail(f"messages.{i}.content", "Input should be a valid string or a list of content blocks")
        if not content and not final_assistant:
            raise _empty_message(i)
        more, count = _check_blocks(content, i, final_assistant)
        fetches, images = fetches or more, images + count
        if role == "assistant":
            _check_tool_results_follow(messages, i, content)
    return fetches, images


def _empty_message(i: int) -> InvalidRequest:
    return _fail(f"messages.{i}", "all messages must have non-empty content except for the optional final "
                                  "assistant message")


_SOURCED = frozenset({"image", "document"})
_FETCHED_SOURCES = frozenset({"url", "file"})


def _sourced(block: dict[str, Any]) -> tuple[bool, int]:
    """For an image or document block: whether its tokens are unbounded by its bytes, and whether it is an
    inline image. An image's URL or file is fetched upstream; a document's tokens (a PDF's pages, each
    read as text and as an image) can far outnumber its bytes, unless it is plain text."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if block.get("type") == "document":
        return kind != "text", 0
    if kind in _FETCHED_SOURCES:
        return True, 0
    return False, 1


def _check_blocks(blocks: list[Any], message: int, final_assistant: bool) -> tuple[bool, int]:
    """Check the blocks of message number ``message``; say whether one has content whose tokens its bytes do
    not bound, and count inline images."""
    fetches, images = False, 0
    for j, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise _fail(f"messages.{message}.content.{j}", "Input should be a valid dictionary")
        btype = block.get("type")
        if btype is None:
            raise _fail(f"messages.{message}.content.{j}.type", "Field required")
        if btype == "text":
            text = block.get("text")
            if text is None:
                raise _fail(f"messages.{message}.content.{j}.text", "Field required")
            if not isinstance(text, str):
                raise _fail(f"messages.{message}.content.{j}.text", "Input should be a valid string")
            if not text:
                if block.get("cache_control"):
                    raise _fail(f"messages.{message}.content.{j}.text",
                                "cache_control cannot be set for empty text blocks")
                if not final_assistant:
                    raise _fail("messages", "text content blocks must be non-empty")
            elif not text.strip() and not final_assistant:
                raise _fail("messages", "text content blocks must contain non-whitespace text")
            continue
        bpath = f"messages.{message}.content.{j}"
        _expect(btype, str, f"{bpath}.type", "string")
        if btype == "tool_use":
            for key, kind, label in (("id", str, "string"), ("name", str, "string"), ("input", dict, "dictionary")):
                if key not in block:
                    raise _fail(f"{bpath}.tool_use.{key}", "Field required")
                _expect(block[key], kind, f"{bpath}.tool_use.{key}", label)
        elif btype == "tool_result":
            if "tool_use_id" not in block:
                raise _fail(f"{bpath}.tool_result.tool_use_id", "Field required")
            _expect(block["tool_use_id"], str, f"{bpath}.tool_result.tool_use_id", "string")
            is_error = block.get("is_error")
            if is_error is not None:
                _expect(is_error, bool, f"{bpath}.tool_result.is_error", "boolean")
            inner = block.get("content")
            if isinstance(inner, list):
                for b in inner:
                    if isinstance(b, dict) and b.get("type") in _SOURCED:
                        more, count = _sourced(b)
                        fetches, images = fetches or more, images + count
        elif btype in _SOURCED:
            more, count = _sourced(block)
            fetches, images = fetches or more, images + count
        elif btype == "container_upload":
            fetches = True
    return fetches, images


def _check_tool_results_follow(messages: list[Any], i: int, content: list[Any]) -> None:
    ids = [b.get("id") for b in content if b.get("type") == "tool_use"]
    if not ids or i + 1 >= len(messages):
        return
    following = messages[i + 1]
    answered: set[object] = set()
    if isinstance(following, dict) and isinstance(following.get("content"), list):
        # Ids of any type are possible here: the next message's blocks are validated after this check.
        answered = {b.get("tool_use_id") for b in following["content"]
                    if isinstance(b, dict) and b.get("type") == "tool_result" and isinstance(b.get("tool_use_id"), str)}
    missing = [str(x) for x in ids if x not in answered]
    if missing:
        raise _fail(f"messages.{i + 1}", "`tool_use` ids were found without `tool_result` blocks immediately "
                                         f"after: {', '.join(missing)}. Each `tool_use` block must have a "
                                         "corresponding `tool_result` block in the next message.")


_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution")


def _check_tools(tools: object) -> bool:
    """Check the tools; True if one is a server tool, which brings in content of its own."""
    if tools is None:
        return False
    _expect(tools, list, "tools", "list")
    assert isinstance(tools, list)
    server = False
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        _expect(tool, dict, path, "dictionary")
        assert isinstance(tool, dict)
        ttype = tool.get("type")
        if ttype is not None and ttype != "custom":
            # Anthropic-defined tools (bash_20250124, web_search_..., ...) carry their own fields.
            _expect(ttype, str, f"{path}.type", "string")
            server = server or ttype.startswith(_SERVER_TOOLS)
            continue
        if "name" not in tool:
            raise _fail(f"{path}.custom.name", "Field required")
        _expect(tool["name"], str, f"{path}.custom.name", "string")
        if not tool["name"]:
            raise _fail(f"{path}.custom.name", "String should have at least 1 character")
        if "input_schema" not in tool:
            raise _fail(f"{path}.custom.input_schema", "Field required")
        _expect(tool["input_schema"], dict, f"{path}.custom.input_schema", "dictionary")
        description = tool.get("description")
        if description is not None:
            _expect(description, str, f"{path}.custom.description", "string")
    return server


def _check_tool_choice(choice: object) -> None:
    if choice is None:
        return
    _expect(choice, dict, "tool_choice", "dictionary")
    assert isinstance(choice, dict)
    ctype = choice.get("type")
    if ctype is None:
        raise _fail("tool_choice.type", "Field required")
    if ctype not in TOOL_CHOICES:
        raise _fail("tool_choice", f"Input tag '{ctype}' found using 'type' does not match any of the expected tags: "
                                   "'auto', 'any', 'tool', 'none'")
    if ctype == "tool":
        if "name" not in choice:
            raise _fail("tool_choice.tool.name", "Field required")
        _expect(choice["name"], str, "tool_choice.tool.name", "string")
    dptu = choice.get("disable_parallel_tool_use")
    if dptu is not None:
        _expect(dptu, bool, f"tool_choice.{ctype}.disable_parallel_tool_use", "boolean")


def _check_thinking(body: dict[str, Any], max_tokens: int, count_tokens: bool, betas: str,
                    has_tools: bool) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    _expect(thinking, dict, "thinking", "dictionary")
    ttype = thinking.get("type")
    if ttype is None:
        raise _fail("thinking.type", "Field required")
    if ttype not in THINKING_TYPES:
        raise _fail("thinking", f"Input tag '{ttype}' found using 'type' does not match any of the expected tags: "
                                "'enabled', 'disabled', 'adaptive'")
    if ttype == "disabled":
        return
    if ttype == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise _fail("thinking.enabled.budget_tokens", "Field required")
        if not _is_int(budget):
            raise _fail("thinking.enabled.budget_tokens", "Input should be a valid integer")
        if budget < 1024:
            raise _fail("thinking.enabled.budget_tokens", "Input should be greater than or equal to 1024")
        # Interleaved thinking spreads the budget over several tool turns, so it may exceed max_tokens.
        interleaved = has_tools and "interleaved-thinking" in betas
        if not count_tokens and budget >= max_tokens and not interleaved:
            raise _fail("", "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                            f"documentation at {THINKING_DOCS}#max-tokens-and-context-window-size")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _fail("", "`temperature` may only be set to 1 when thinking is enabled or in adaptive mode. "
                        f"Please consult our documentation at {THINKING_DOCS}"
                        "#important-considerations-when-using-extended-thinking")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _fail("", "Thinking may not be enabled when tool_choice forces tool use.")
