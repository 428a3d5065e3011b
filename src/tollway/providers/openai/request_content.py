"""Anthropic ``system`` and ``messages`` as Chat Completions ``messages``.

The rules that shape the conversation:

* The top-level ``system`` becomes one leading system message, its text blocks joined with a blank line.
  Claude Code's attribution block (``x-anthropic-billing-header: ...``) is dropped: only
  api.anthropic.com knows to ignore it, and anywhere else it is prompt text that changes per
  conversation.
* A ``role: "system"`` message in the middle of the conversation is folded into a user turn as
  ``<system-reminder>`` text: many self-hosted chat templates refuse a system message that is not
  first, and Claude Code already speaks to models in that form. It joins the user turn before it, or
  else the next one; with neither, it becomes a user message of its own.
* Every assistant ``tool_calls`` entry is answered by ``tool`` messages right after the assistant
  message, as OpenAI requires: the ``tool_result`` blocks of the next user message come first, in
  their order; a call with no result (an interrupted turn) gets ``(no result)``; the rest of that
  user message follows as one user message. Images and PDFs inside a tool result move into that
  user message, since OpenAI allows them in user messages only.
* ``is_error`` has no OpenAI field: the tool message starts with ``[tool error]``.
* Text-only user content is sent as a plain string (some servers take nothing else), blank text is
  dropped, and so is what has no equivalent: ``cache_control``, citations, ``redacted_thinking``,
  thinking in user turns, server-tool blocks, unknown blocks.
"""

from __future__ import annotations

import json
from typing import Any

from tollway.protocol.catalog import BILLING_HEADER
from tollway.providers.openai.names import ToolNames, outbound_id
from tollway.upstream_options import ReasoningField

NO_RESULT = "(no result)"
TOOL_ERROR = "[tool error]"
ORPHAN_RESULT = "[tool result]"

Part = dict[str, Any]
Message = dict[str, Any]


def to_chat_messages(payload: dict[str, Any], *, reasoning_field: ReasoningField,
                     names: ToolNames) -> list[Message]:
    """The Chat Completions messages for an Anthropic body's ``system`` and ``messages``."""
    conversation = _Conversation(reasoning_field, names)
    system = system_text(payload.get("system"))
    if system:
        conversation.messages.append({"role": "system", "content": system})
    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            conversation.add(message)
    return conversation.finish()


def system_text(system: object) -> str:
    """The top-level system prompt as one string, without Claude Code's attribution block."""
    if isinstance(system, str):
        return system if system.strip() else ""
    texts = [block["text"] for block in _blocks(system)
             if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"].strip()
             and not block["text"].startswith(BILLING_HEADER)]
    return "\n\n".join(texts)


def _blocks(content: object) -> list[dict[str, Any]]:
    """The content blocks of a message, a string being one text block; non-objects are skipped."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def _text(text: str) -> Part:
    return {"type": "text", "text": text}


def _reminder(text: str) -> Part:
    return _text(f"<system-reminder>\n{text}\n</system-reminder>")


def _system_parts(content: object) -> list[Part]:
    """A mid-conversation system message (or ``mid_conv_system`` block) as reminder text parts."""
    parts: list[Part] = []
    for block in _blocks(content):
        if block.get("type") == "mid_conv_system":
            parts.extend(_system_parts(block.get("content")))
        elif block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"].strip():
            parts.append(_reminder(block["text"]))
    return parts


def _media(source: object, *, document: bool) -> Part | None:
    """An image or PDF source as an ``image_url`` or ``file`` part; None when there is no equivalent."""
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        default = "application/pdf" if document else "image/png"
        media_type = source.get("media_type") if isinstance(source.get("media_type"), str) else default
        uri = f"data:{media_type};base64,{source['data']}"
        if document:
            return {"type": "file", "file": {"filename": "document.pdf", "file_data": uri}}
        return {"type": "image_url", "image_url": {"url": uri}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        if document:
            # Chat Completions takes no file URL; the model at least learns where the document is.
            return _text(f"[document: {source['url']}]")
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    return None  # Anthropic Files API ids mean nothing upstream.


def _titled(title: object, body: str) -> str:
    return f"{title}\n\n{body}" if isinstance(title, str) and title.strip() and body else body


class _Conversation:
    """Chat messages being built, with the tool calls still waiting for an answer."""

    def __init__(self, reasoning_field: ReasoningField, names: ToolNames) -> None:
        self.reasoning_field = reasoning_field
        self.names = names
        self.messages: list[Message] = []
        self.open_calls: list[str] = []
        """Outbound ids of the last assistant message's tool calls that no tool message answers yet."""
        self.reminders: list[Part] = []
        """System text waiting for a user turn."""

    def add(self, message: dict[str, Any]) -> None:
        role = message.get("role")
        content = message.get("content")
        if role == "assistant":
            self._assistant(content)
        elif role == "system":
            self._system(content)
        else:
            self._user(content)

    def finish(self) -> list[Message]:
        self._close_calls()
        self._flush_reminders()
        for message in self.messages:
            content = message.get("content")
            if message["role"] == "user" and isinstance(content, list) and all(p["type"] == "text" for p in content):
                message["content"] = "\n".join(p["text"] for p in content)
        return self.messages

    # Roles

    def _system(self, content: object) -> None:
        parts = _system_parts(content)
        if not parts:
            return
        last = self.messages[-1] if self.messages else None
        if not self.open_calls and last is not None and last["role"] == "user":
            last["content"].extend(parts)
        else:
            self.reminders.extend(parts)

    def _user(self, content: object) -> None:
        tool_messages: list[Message] = []
        moved: list[Part] = []  # images and PDFs of tool results
        parts: list[Part] = []
        for block in _blocks(content):
            if block.get("type") != "tool_result":
                parts.extend(self._parts(block))
                continue
            call_id = outbound_id(str(block.get("tool_use_id")))
            text, media = self._tool_result(block)
            if call_id in self.open_calls:
                self.open_calls.remove(call_id)
                tool_messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
                moved.extend(media)
            else:
                # No tool call to answer (Anthropic itself refuses this): keep the content as user text.
                if text.strip():
                    parts.append(_text(f"{ORPHAN_RESULT}\n{text}"))
                parts.extend(media)
        self.messages.extend(tool_messages)
        self._close_calls()
        user_parts = [*self.reminders, *moved, *parts]
        self.reminders = []
        if user_parts:
            self.messages.append({"role": "user", "content": user_parts})

    def _assistant(self, content: object) -> None:
        self._close_calls()
        self._flush_reminders()
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        thoughts: list[str] = []
        for block in _blocks(content):
            btype = block.get("type")
            if btype == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif btype == "tool_use":
                calls.append({
                    "id": outbound_id(str(block.get("id"))),
                    "type": "function",
                    "function": {"name": self.names.outbound(str(block.get("name"))),
                                 "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False,
                                                         separators=(",", ":"))},
                })
            elif btype == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"].strip():
                thoughts.append(block["thinking"])
            # redacted_thinking, server_tool_use and server tool results have no equivalent.
        text = "".join(texts)
        if not text.strip():
            text = ""
        message: Message = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        if thoughts and self.reasoning_field != "none":
            message[self.reasoning_field] = "\n".join(thoughts)
        elif not text and not calls:
            return  # nothing left to say (an empty prefill, or only redacted thinking)
        self.messages.append(message)
        self.open_calls = [call["id"] for call in calls]

    def _close_calls(self) -> None:
        for call_id in self.open_calls:
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": NO_RESULT})
        self.open_calls = []

    def _flush_reminders(self) -> None:
        if self.reminders:
            self.messages.append({"role": "user", "content": self.reminders})
            self.reminders = []

    # Blocks

    def _parts(self, block: dict[str, Any]) -> list[Part]:
        """A user content block (or an item of a tool result) as Chat Completions parts."""
        btype = block.get("type")
        if btype == "text":
            text = block.get("text")
            return [_text(text)] if isinstance(text, str) and text.strip() else []
        if btype == "image":
            part = _media(block.get("source"), document=False)
            return [part] if part else []
        if btype == "document":
            return self._document(block)
        if btype == "search_result":
            body = "\n".join(p["text"] for item in _blocks(block.get("content")) for p in self._parts(item)
                             if p["type"] == "text")
            source = block.get("source")
            head = "\n".join(x for x in (block.get("title"), source) if isinstance(x, str) and x.strip())
            text = f"{head}\n\n{body}" if head and body else head or body
            return [_text(text)] if text.strip() else []
        if btype == "tool_reference" and isinstance(block.get("tool_name"), str):
            # Claude Code's tool search names a tool it has just loaded; every tool is sent upstream anyway.
            return [_text(f"Tool loaded: {self.names.outbound(block['tool_name'])}")]
        if btype == "mid_conv_system":
            return _system_parts(block.get("content"))
        return []  # thinking, redacted_thinking, container_upload, unknown blocks

    def _document(self, block: dict[str, Any]) -> list[Part]:
        source = block.get("source")
        if not isinstance(source, dict):
            return []
        title = block.get("title")
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            text = _titled(title, source["data"])
            return [_text(text)] if text.strip() else []
        if source.get("type") == "content":
            inner = [p for item in _blocks(source.get("content")) for p in self._parts(item)]
            if inner and inner[0]["type"] == "text":
                inner[0] = _text(_titled(title, inner[0]["text"]))
            return inner
        part = _media(source, document=True)
        return [part] if part else []

    def _tool_result(self, block: dict[str, Any]) -> tuple[str, list[Part]]:
        """The text of a tool result, and the images or files it holds."""
        content = block.get("content")
        media: list[Part] = []
        if isinstance(content, str):
            text = content
        else:
            texts: list[str] = []
            for item in _blocks(content):
                for part in self._parts(item):
                    if part["type"] == "text":
                        texts.append(part["text"])
                    else:
                        media.append(part)
            text = "\n".join(texts)
        if block.get("is_error") is True:
            text = f"{TOOL_ERROR}\n{text}" if text else TOOL_ERROR
        return text, media
