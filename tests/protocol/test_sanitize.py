"""History from translated upstreams, made acceptable to Anthropic."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from tollway.protocol.sanitize import (
    drop_foreign_thinking,
    drop_signed_thinking,
    has_signed_thinking,
    needs_sanitizing,
)

REAL = {"type": "thinking", "thinking": "real", "signature": "EqQBCgIYAhIM"}
SYNTHETIC = {"type": "thinking", "thinking": "from deepseek", "signature": "tollway1:ab12"}


def conversation(*assistant_turns: list[Any], thinking: str = "enabled") -> dict[str, Any]:
    messages: list[Any] = []
    for turn in assistant_turns:
        messages += [{"role": "user", "content": "q"}, {"role": "assistant", "content": turn}]
    messages.append({"role": "user", "content": "next"})
    return {"model": "m", "max_tokens": 2048, "thinking": {"type": thinking, "budget_tokens": 1024},
            "messages": messages}


def test_clean_bodies_are_not_touched() -> None:
    body = conversation([REAL, {"type": "text", "text": "a"}])
    raw = orjson.dumps(body)
    assert not needs_sanitizing(raw)
    before = copy.deepcopy(body)
    assert drop_foreign_thinking(body) is False and body == before


def test_synthetic_and_empty_thinking_are_dropped_real_kept() -> None:
    empty = {"type": "thinking", "thinking": "", "signature": ""}
    body = conversation([SYNTHETIC, {"type": "text", "text": "a"}], [empty, REAL, {"type": "text", "text": "b"}])
    assert needs_sanitizing(orjson.dumps(body))
    assert drop_foreign_thinking(body) is True
    assert body["messages"][1]["content"] == [{"type": "text", "text": "a"}]
    assert body["messages"][3]["content"] == [REAL, {"type": "text", "text": "b"}]
    assert body["thinking"]["type"] == "enabled"  # the last assistant turn kept its real thinking


def test_last_turn_losing_its_thinking_turns_thinking_off() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}
    body = conversation([SYNTHETIC, tool])
    body["messages"][-1] = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}
    assert drop_foreign_thinking(body)
    assert body["messages"][1]["content"] == [tool]
    assert body["thinking"] == {"type": "disabled"}


def test_thinking_only_turn_keeps_a_placeholder() -> None:
    body = conversation([SYNTHETIC], thinking="disabled")
    assert drop_foreign_thinking(body)
    assert body["messages"][1]["content"] == [{"type": "text", "text": "(thinking omitted)"}]
    assert body["thinking"]["type"] == "disabled"


def test_spaced_json_is_recognised() -> None:
    # Python's json module writes ": " between keys and values; the byte test must not depend on spacing.
    import json

    body = conversation([SYNTHETIC, {"type": "text", "text": "a"}])
    assert needs_sanitizing(json.dumps(body).encode())


def test_drop_signed_thinking_removes_real_and_redacted_blocks() -> None:
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    body = conversation([REAL, redacted, {"type": "text", "text": "a"}])
    assert has_signed_thinking(orjson.dumps(body))
    assert drop_signed_thinking(body)
    assert body["messages"][1]["content"] == [{"type": "text", "text": "a"}]
    assert not has_signed_thinking(orjson.dumps(body))
