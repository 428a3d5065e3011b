"""The real Claude Code CLI through Tollway to the scripted fake upstream: a Bash tool round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gateway
from tollway.config import parse_config
from tollway.store import Budget

from .client import run_claude
from .fake_upstream import FakeUpstream

UPSTREAM_KEY = "sk-ant-api03-tollway-upstream"
PROMPT = "Run the marker command with the Bash tool and tell me exactly what it printed."


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    # The fake accepts only the upstream key: the client's Tollway key must never reach it.
    with FakeUpstream(expected_api_key=UPSTREAM_KEY) as upstream:
        yield upstream


@pytest.fixture
def cc_gateway(fake: FakeUpstream, tmp_path: Path) -> Iterator[Gateway]:
    raw = {
        "storage": {"url": f"sqlite:///{tmp_path / 'cc.db'}", "flush_interval": 0.05},
        "upstreams": [{"name": "fake", "kind": "anthropic", "base_url": fake.base_url, "api_keys": [UPSTREAM_KEY]}],
        "models": [{"name": "claude-sonnet-4-6", "targets": [{"upstream": "fake"}]}],
    }
    gw = Gateway(parse_config(raw, "claude-code test", {}))
    yield gw
    gw.server.close()


@pytest.mark.parametrize("bare", [True, False], ids=["bare", "full"])
def test_bash_tool_round_trip_through_tollway(claude_bin: Path, fake: FakeUpstream, cc_gateway: Gateway,
                                              tmp_path: Path, bare: bool) -> None:
    secret = cc_gateway.create_key("claude-code")
    work = tmp_path / "work"
    work.mkdir()
    result = run_claude(cc_gateway.url, secret, PROMPT, work, bare=bare, claude=claude_bin)
    diag = f"result: {result}\ntraffic:\n{fake.dump()}"

    assert result.get("is_error") is False, diag
    assert fake.tool_use_sent, diag
    assert fake.tool_result_text == fake.marker, diag
    assert fake.marker in str(result.get("result")), diag

    sent = fake.messages_requests()
    assert len(sent) >= 2, diag
    for request in sent:
        assert request.headers["x-api-key"] == UPSTREAM_KEY
        assert "claude-code-20250219" in request.headers["anthropic-beta"]
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert request.path_qs.endswith("?beta=true")

    rows = [r for r in cc_gateway.usage() if r.endpoint == "messages"]
    assert len(rows) == len(sent), diag
    assert all(r.status == 200 and r.stream and r.error_type is None for r in rows), rows
    assert all(r.input_tokens > 0 and r.output_tokens > 0 for r in rows), rows


def test_claude_code_on_a_prepaid_key_is_billed_and_stopped_with_the_balance_message(
        claude_bin: Path, fake: FakeUpstream, cc_gateway: Gateway, tmp_path: Path) -> None:
    secret = cc_gateway.create_key("claude-code-prepaid", budget=Budget(prepaid=True))
    key_id = cc_gateway.key_id("claude-code-prepaid")
    cc_gateway.topup(key_id, 50_000_000_000)  # $50: room for Claude Code's large reserves
    work = tmp_path / "work"
    work.mkdir()
    result = run_claude(cc_gateway.url, secret, PROMPT, work, bare=True, claude=claude_bin)
    assert result.get("is_error") is False, f"result: {result}\ntraffic:\n{fake.dump()}"
    rows = [r for r in cc_gateway.usage() if r.key_id == key_id and r.endpoint == "messages"]
    assert rows and all(r.cost_nanousd for r in rows)
    live, stored = cc_gateway.balance(key_id)
    assert live == stored == 50_000_000_000 - sum(r.cost_nanousd or 0 for r in rows)

    # Take the rest back: the next turn is refused before the upstream, and Claude Code shows why.
    cc_gateway.topup(key_id, -live)
    sent_before = len(fake.messages_requests())
    refused = run_claude(cc_gateway.url, secret, PROMPT, work, bare=True, claude=claude_bin)
    assert refused.get("is_error") is True and refused.get("api_error_status") == 402, refused
    # Claude Code knows Anthropic's wording and shows its own notice for it.
    assert "credit balance is too low" in str(refused.get("result")).lower(), refused
    assert len(fake.messages_requests()) == sent_before
