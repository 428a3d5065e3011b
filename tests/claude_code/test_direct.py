"""The real Claude Code CLI against the scripted fake upstream, with no gateway in between.

This is the baseline for the gateway tests: if it fails, the CLI or the fake is at fault,
not Tollway. It also pins down the traffic shape the gateway has to carry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .client import DEFAULT_MODEL, run_claude
from .fake_upstream import FakeUpstream

API_KEY = "sk-ant-api03-tollway-test-direct"
PROMPT = "Run the marker command with the Bash tool and tell me exactly what it printed."


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    # Requiring the key proves the CLI authenticates the way the gateway will expect.
    with FakeUpstream(expected_api_key=API_KEY) as fake:
        yield fake


def _diagnostics(result: dict[str, object], upstream: FakeUpstream) -> str:
    return f"result: {result}\ntraffic:\n{upstream.dump()}"


@pytest.mark.parametrize("bare", [True, False], ids=["bare", "full"])
def test_bash_tool_round_trip(claude_bin: Path, upstream: FakeUpstream, tmp_path: Path, bare: bool) -> None:
    result = run_claude(upstream.base_url, API_KEY, PROMPT, tmp_path, bare=bare, claude=claude_bin)
    diag = _diagnostics(result, upstream)

    assert result.get("is_error") is False, diag
    assert result.get("subtype") == "success", diag
    assert upstream.tool_use_sent, diag
    # Exact equality, not containment: the command text also holds the marker, so only the
    # bare echo output proves the CLI really executed it.
    assert upstream.tool_result_text == upstream.marker, diag
    assert upstream.tool_result_is_error is False, diag
    assert upstream.marker in str(result.get("result")), diag


def test_traffic_shape(claude_bin: Path, upstream: FakeUpstream, tmp_path: Path) -> None:
    result = run_claude(upstream.base_url, API_KEY, PROMPT, tmp_path, claude=claude_bin)
    diag = _diagnostics(result, upstream)
    assert result.get("is_error") is False, diag

    messages = upstream.messages_requests()
    # One request that gets the tool_use, one that carries the tool_result.
    assert len(messages) == 2, diag
    for req in messages:
        assert req.path_qs == "/v1/messages?beta=true", diag
        assert req.headers.get("x-api-key") == API_KEY, diag
        assert "authorization" not in req.headers, diag
        assert req.headers.get("anthropic-version") == "2023-06-01", diag
        assert "claude-code-20250219" in req.headers.get("anthropic-beta", ""), diag
        assert req.stream, diag
        assert req.model == DEFAULT_MODEL, diag
        assert "Bash" in req.tool_names, diag

    first, second = messages
    assert first.body["messages"][-1]["role"] == "user", diag
    # The CLI replays the scripted tool_use verbatim and answers it in the next user turn.
    assistant, user = second.body["messages"][-2:]
    assert assistant["role"] == "assistant", diag
    assert any(b.get("id") == upstream.tool_use_id for b in assistant["content"]), diag
    assert user["role"] == "user", diag
    # Only GET/HEAD probes may hit other paths; no count_tokens or other API calls are expected.
    others = [r for r in upstream.requests if r not in messages]
    assert all(r.method in ("HEAD", "GET") for r in others), diag
