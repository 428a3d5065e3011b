"""An Anthropic Messages request as an OpenAI Chat Completions request.

`to_chat_request` is pure: the body in, the body out. The conversation itself is built by
`tollway.providers.openai.request_content`; this module does the top-level fields, tools and the
thinking switch. Only the fields named here are sent: an OpenAI server refuses parameters it does not
know, so Anthropic-only fields (``context_management``, ``container``, ``mcp_servers``,
``service_tier``, ``inference_geo``, ``cache_control``, ``speed``, ``diagnostics``...) and any field
unknown today are left out.

Choices the Anthropic API leaves open:

* Server tools (``web_search_*``, ``web_fetch_*``, ``code_execution_*``, ``computer_*``, ``bash_*``,
  ``text_editor_*``, ``memory_*``, ``tool_search_*``, ``mcp_toolset``; any tool with a ``type`` other
  than ``custom``) are run by Anthropic or described by Anthropic's own schema; an OpenAI upstream has
  neither, so they are dropped (Claude Code's WebSearch then finds nothing). A ``tool_choice`` that
  forces one of them is refused, since the answer could not honour it.
* A thinking budget becomes an effort: below 4,096 tokens ``low``, below 16,384 ``medium``, else
  ``high``. Adaptive thinking takes ``output_config.effort``, ``medium`` by default, with ``xhigh`` and
  ``max`` lowered to ``high`` (the highest OpenAI knows). Disabled or absent thinking sends nothing, except
  DeepSeek's explicit ``thinking: disabled`` and OpenRouter's ``reasoning: {"enabled": false}``.
* ``metadata.user_id`` goes out as the SHA-256 hex of its value: Claude Code's is a JSON string with
  device and session ids, which no upstream should see, and OpenAI's fields take 64 characters.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tollway.errors import InvalidRequest
from tollway.providers.openai.names import ToolNames
from tollway.providers.openai.request_content import to_chat_messages
from tollway.providers.openai.schema import clean_schema
from tollway.upstream_options import OpenAIOptions

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
RESPONSE_FORMAT_NAME = "response"
LOW_BUDGET = 4096
"""Thinking budgets below this ask for ``low`` effort."""
MEDIUM_BUDGET = 16384
"""Thinking budgets below this (and from LOW_BUDGET) ask for ``medium`` effort; larger ones ``high``."""
DEFAULT_EFFORT = "medium"

_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
"""Anthropic ``output_config.effort`` to OpenAI ``reasoning_effort``."""
_DEEPSEEK_EFFORTS = {"minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high",
                     "max": "max"}
"""DeepSeek takes ``low``, ``high`` and ``max``."""
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def to_chat_request(payload: dict[str, Any], *, model: str, options: OpenAIOptions, stream: bool,
                    names: ToolNames) -> dict[str, Any]:
    """The Chat Completions body for an Anthropic Messages body."""
    out: dict[str, Any] = {"model": model}
    tools, dropped = _tools(payload.get("tools"), options, names)
    choice = _tool_choice(payload.get("tool_choice"), bool(tools), dropped, names)
    out["messages"] = to_chat_messages(payload, reasoning_field=options.reasoning_field, names=names)
    max_tokens = payload.get("max_tokens")
    if isinstance(max_tokens, int):
        if options.max_output_tokens is not None:
            max_tokens = min(max_tokens, options.max_output_tokens)
        out[options.max_tokens_field] = max_tokens
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    _sampling(payload, options, out)
    if tools:
        out["tools"] = tools
        out.update(choice)
    out.update(_reasoning(payload, options))
    response_format = _response_format(payload, options)
    if response_format is not None:
        out["response_format"] = response_format
    return out


def _sampling(payload: dict[str, Any], options: OpenAIOptions, out: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    if options.send_top_k and payload.get("top_k") is not None:
        out["top_k"] = payload["top_k"]
    stop = [s for s in payload.get("stop_sequences") or [] if isinstance(s, str)]
    if options.max_stop_sequences is not None:
        stop = stop[:options.max_stop_sequences]
    if stop:
        out["stop"] = stop
    metadata = payload.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and user_id:
        out["user"] = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


# Tools


def _tools(tools: object, options: OpenAIOptions, names: ToolNames) -> tuple[list[dict[str, Any]], set[str]]:
    """The function tools, and the names of the server tools that were dropped."""
    functions: list[dict[str, Any]] = []
    dropped: set[str] = set()
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") not in (None, "custom"):
            name = tool.get("name", tool.get("mcp_server_name"))
            dropped.add(name if isinstance(name, str) else str(tool.get("type")))
            continue
        schema = tool.get("input_schema")
        function: dict[str, Any] = {"name": names.outbound(str(tool.get("name")))}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = (clean_schema(schema, options.schema_cleaning)
                                  if isinstance(schema, dict) and schema else dict(EMPTY_PARAMETERS))
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        functions.append({"type": "function", "function": function})
    return functions, dropped


def _tool_choice(choice: object, has_tools: bool, dropped: set[str], names: ToolNames) -> dict[str, Any]:
    """``tool_choice`` and ``parallel_tool_calls``; refuses a choice only dropped tools could satisfy."""
    if not isinstance(choice, dict):
        return {}
    ctype = choice.get("type")
    name = choice.get("name")
    if ctype == "tool" and isinstance(name, str) and name in dropped:
        raise InvalidRequest(f"tool_choice: the tool '{name}' is an Anthropic server tool, which this upstream "
                             "does not offer; it cannot be forced")
    if ctype == "any" and dropped and not has_tools:
        raise InvalidRequest(f"tool_choice: 'any' forces a tool, but the only tools given are Anthropic server "
                             f"tools ({', '.join(sorted(dropped))}), which this upstream does not offer")
    out: dict[str, Any] = {}
    if ctype == "tool" and isinstance(name, str):
        out["tool_choice"] = {"type": "function", "function": {"name": names.outbound(name)}}
    elif isinstance(ctype, str) and ctype in _CHOICES:
        out["tool_choice"] = _CHOICES[ctype]
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


# Thinking


def budget_effort(budget: int) -> str:
    """The reasoning effort for an Anthropic thinking budget."""
    if budget < LOW_BUDGET:
        return "low"
    return "medium" if budget < MEDIUM_BUDGET else "high"


def _reasoning(payload: dict[str, Any], options: OpenAIOptions) -> dict[str, Any]:
    thinking = payload.get("thinking")
    if options.reasoning_request == "none" or not isinstance(thinking, dict):
        return {}
    ttype = thinking.get("type")
    if ttype == "disabled":
        if options.reasoning_request == "deepseek":
            return {"thinking": {"type": "disabled"}}
        if options.reasoning_request == "openrouter":
            return {"reasoning": {"enabled": False}}
        return {}
    if ttype not in ("enabled", "adaptive"):
        return {}
    budget = thinking.get("budget_tokens") if ttype == "enabled" else None
    if isinstance(budget, bool) or not isinstance(budget, int):
        budget = None
    effort = budget_effort(budget) if budget is not None else _adaptive_effort(payload.get("output_config"))
    if options.reasoning_request == "deepseek":
        return {"thinking": {"type": "enabled"}, "reasoning_effort": _DEEPSEEK_EFFORTS[effort]}
    if options.reasoning_request == "openrouter":
        return {"reasoning": {"max_tokens": budget} if budget is not None else {"effort": _EFFORTS[effort]}}
    return {"reasoning_effort": _EFFORTS[effort]}


def _adaptive_effort(output_config: object) -> str:
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    return effort if isinstance(effort, str) and effort in _EFFORTS else DEFAULT_EFFORT


# Structured output


def _response_format(payload: dict[str, Any], options: OpenAIOptions) -> dict[str, Any] | None:
    output_config = payload.get("output_config")
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    if fmt is None:
        fmt = payload.get("output_format")  # the deprecated spelling
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        return None
    return {"type": "json_schema", "json_schema": {"name": RESPONSE_FORMAT_NAME,
                                                   "schema": clean_schema(fmt["schema"], options.schema_cleaning),
                                                   "strict": True}}
