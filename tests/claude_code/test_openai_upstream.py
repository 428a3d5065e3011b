"""Claude Code on another model: Claude Code -> Tollway -> a fake OpenAI-compatible server, a Bash round trip."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIServer
from tollway.config import parse_config

from .client import run_claude


@pytest.fixture
def side() -> Iterator[FakeOpenAIServer]:
    side = FakeOpenAIServer()
    yield side
    side.close()


@pytest.fixture
def oa_gateway(side: FakeOpenAIServer, tmp_path: Path) -> Iterator[Gateway]:
    raw = {
        "storage": {"url": f"sqlite:///{tmp_path / 'cc.db'}", "flush_interval": 0.05},
        "upstreams": [{"name": "local-llm", "kind": "openai", "base_url": side.url + "/v1",
                       "api_keys": ["sk-local"], "family": "vllm"}],
        "models": [{"name": "claude-sonnet-4-6", "targets": [{"upstream": "local-llm", "model": "qwen3-coder"}]}],
    }
    gw = Gateway(parse_config(raw, "claude-code openai test", {}))
    yield gw
    gw.server.close()


def _tool_messages(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [m for body in fake.received for m in body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("bare", [True, False], ids=["bare", "full"])
def test_claude_code_runs_a_tool_on_an_openai_upstream(claude_bin: Path, side: FakeOpenAIServer,
                                                       oa_gateway: Gateway, tmp_path: Path, bare: bool) -> None:
    fake = side.fake
    marker = "tollway-marker-" + secrets.token_hex(6)
    work = tmp_path / "work"
    work.mkdir()
    result = run_claude(oa_gateway.url, oa_gateway.create_key("cc"),
                        f"Run `echo {marker}` with the Bash tool and tell me exactly what it printed.", work,
                        bare=bare, claude=claude_bin)
    diag = f"result: {result}\nupstream saw: {fake.received}"
    assert result.get("is_error") is False, diag
    tool_messages = _tool_messages(fake)
    assert tool_messages, diag
    assert marker in str(tool_messages[-1]["content"]), diag
    assert marker in str(result.get("result")), diag
    assert all(body["model"] == "qwen3-coder" for body in fake.received)
    # Claude Code's attribution block never reaches a non-Anthropic upstream.
    assert not any("x-anthropic-billing-header" in str(body["messages"][0]) for body in fake.received), diag
