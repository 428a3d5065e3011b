"""validate_request: every rule it enforces, with the wording the real API uses (reference section 2)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.errors import InvalidRequest
from tollway.protocol.validate import RequestInfo, validate_request

DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
USER = {"role": "user", "content": "Hi"}

# The example body from the seed page (../shared/seed/messages-api.txt), max_tokens raised from 1024 to 2048:
# with 1024 its thinking budget of 1025 is not below max_tokens, which the real API rejects.
SEED: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "messages": [{"role": "user", "content": "Hello, Claude!"}],
    "max_tokens": 2048,
    "system": "<string>",
    "metadata": {"user_id": "<string>"},
    "stop_sequences": ["<string>"],
    "temperature": 1,
    "top_p": 0.5,
    "top_k": 1,
    "stream": False,
    "tools": [{"name": "<string>", "input_schema": {}, "description": "<string>"}],
    "tool_choice": {"type": "auto", "name": "<string>"},
    "thinking": {"type": "enabled", "budget_tokens": 1025},
}


def body(**fields: Any) -> dict[str, Any]:
    """A minimal valid body with ``fields`` set; a value of ``...`` removes the field."""
    out: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": [USER]}
    for key, value in fields.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def msgs(*contents: Any) -> list[dict[str, Any]]:
    """Alternating user/assistant messages with the given contents."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]


def tool_use(tid: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": "get_weather", "input": {"city": "Paris"}}


def tool_result(tid: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": "sunny"}


THINKING = {"type": "enabled", "budget_tokens": 2000}
TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]

# Messages quoted in the reference, section 2, word for word.
BUDGET_TOO_SMALL = "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
BUDGET_NOT_BELOW_MAX = ("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation "
                        f"at {DOCS}#max-tokens-and-context-window-size")
TEMPERATURE_WITH_THINKING = ("`temperature` may only be set to 1 when thinking is enabled or in adaptive mode. "
                             f"Please consult our documentation at {DOCS}"
                             "#important-considerations-when-using-extended-thinking")
FORCED_TOOL_WITH_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
EMPTY_MESSAGE = "all messages must have non-empty content except for the optional final assistant message"
EMPTY_TEXT = "messages: text content blocks must be non-empty"
WHITESPACE_TEXT = "messages: text content blocks must contain non-whitespace text"
CAP = "max_tokens: 128001 > 64000, which is the maximum allowed number of output tokens for claude-opus-4-5-20251101"

# (body, keyword arguments, the whole message). Rows whose message the reference quotes use the constants above;
# the others follow the API's pydantic style: a dotted path, then what is wrong.
INVALID: list[Any] = [
    # -- thinking (reference-exact) ---------------------------------------------------------------------------
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": 1023}), {}, BUDGET_TOO_SMALL, id="budget-1023"),
    pytest.param(body(max_tokens=2000, thinking=THINKING), {}, BUDGET_NOT_BELOW_MAX, id="budget-equals-max"),
    pytest.param(body(max_tokens=1999, thinking=THINKING), {}, BUDGET_NOT_BELOW_MAX, id="budget-above-max"),
    pytest.param(body(max_tokens=1500, thinking=THINKING, tools=TOOLS), {}, BUDGET_NOT_BELOW_MAX,
                 id="budget-above-max-tools-without-interleaved-beta"),
    pytest.param(body(max_tokens=1500, thinking=THINKING), {"betas": "interleaved-thinking-2025-05-14"},
                 BUDGET_NOT_BELOW_MAX, id="budget-above-max-interleaved-beta-without-tools"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, temperature=0.5), {}, TEMPERATURE_WITH_THINKING,
                 id="temperature-0.5-thinking"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, temperature=0), {}, TEMPERATURE_WITH_THINKING,
                 id="temperature-0-thinking"),
    pytest.param(body(thinking={"type": "adaptive"}, temperature=0.7), {}, TEMPERATURE_WITH_THINKING,
                 id="temperature-adaptive"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, tools=TOOLS, tool_choice={"type": "any"}), {},
                 FORCED_TOOL_WITH_THINKING, id="tool-choice-any-thinking"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, tools=TOOLS,
                      tool_choice={"type": "tool", "name": "get_weather"}), {},
                 FORCED_TOOL_WITH_THINKING, id="tool-choice-tool-thinking"),
    pytest.param(body(thinking={"type": "adaptive"}, tools=TOOLS, tool_choice={"type": "any"}), {},
                 FORCED_TOOL_WITH_THINKING, id="tool-choice-any-adaptive"),
    # -- thinking (shape) ---------------------------------------------------------------------------------------
    pytest.param(body(thinking={"type": "on"}), {},
                 "thinking: Input tag 'on' found using 'type' does not match any of the expected tags: "
                 "'enabled', 'disabled', 'adaptive'", id="thinking-unknown-type"),
    pytest.param(body(thinking={"budget_tokens": 2000}), {}, "thinking.type: Field required", id="thinking-no-type"),
    pytest.param(body(thinking=True), {}, "thinking: Input should be a valid dictionary", id="thinking-bool"),
    pytest.param(body(thinking={"type": "enabled"}), {}, "thinking.enabled.budget_tokens: Field required",
                 id="thinking-no-budget"),
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": "2000"}), {},
                 "thinking.enabled.budget_tokens: Input should be a valid integer", id="budget-string"),
    pytest.param(body(thinking={"type": "enabled", "budget_tokens": 2000.5}), {},
                 "thinking.enabled.budget_tokens: Input should be a valid integer", id="budget-float"),
    # -- max_tokens -----------------------------------------------------------------------------------------------
    pytest.param(body(model="claude-opus-4-5-20251101", max_tokens=128001), {"max_tokens_cap": 64000}, CAP,
                 id="max-tokens-over-cap"),
    pytest.param(body(max_tokens=...), {}, "max_tokens: Field required", id="max-tokens-missing"),
    pytest.param(body(max_tokens=0), {}, "max_tokens: Input should be greater than or equal to 1", id="max-tokens-0"),
    pytest.param(body(max_tokens=-5), {}, "max_tokens: Input should be greater than or equal to 1",
                 id="max-tokens-negative"),
    pytest.param(body(max_tokens="1024"), {}, "max_tokens: Input should be a valid integer", id="max-tokens-string"),
    pytest.param(body(max_tokens=10.5), {}, "max_tokens: Input should be a valid integer", id="max-tokens-float"),
    pytest.param(body(max_tokens=True), {}, "max_tokens: Input should be a valid integer", id="max-tokens-bool"),
    pytest.param(body(max_tokens=None), {}, "max_tokens: Input should be a valid integer", id="max-tokens-null"),
    # -- sampling ranges ----------------------------------------------------------------------------------------
    pytest.param(body(temperature=1.01), {}, "temperature: Input should be less than or equal to 1", id="temp-high"),
    pytest.param(body(temperature=-0.1), {}, "temperature: Input should be greater than or equal to 0",
                 id="temp-negative"),
    pytest.param(body(temperature="0.5"), {}, "temperature: Input should be a valid number", id="temp-string"),
    pytest.param(body(temperature=False), {}, "temperature: Input should be a valid number", id="temp-bool"),
    pytest.param(body(top_p=1.5), {}, "top_p: Input should be less than or equal to 1", id="top-p-high"),
    pytest.param(body(top_p=-0.01), {}, "top_p: Input should be greater than or equal to 0", id="top-p-negative"),
    pytest.param(body(top_p=[0.5]), {}, "top_p: Input should be a valid number", id="top-p-list"),
    pytest.param(body(top_k=-1), {}, "top_k: Input should be greater than or equal to 0", id="top-k-negative"),
    pytest.param(body(top_k=2.5), {}, "top_k: Input should be a valid integer", id="top-k-float"),
    pytest.param(body(top_k="5"), {}, "top_k: Input should be a valid integer", id="top-k-string"),
    # -- top level types and missing fields -----------------------------------------------------------------------
    pytest.param([1, 2], {}, "Input should be a valid dictionary or object to extract fields from, got array",
                 id="body-array"),
    pytest.param("hello", {}, "Input should be a valid dictionary or object to extract fields from, got string",
                 id="body-string"),
    pytest.param(None, {}, "Input should be a valid dictionary or object to extract fields from, got null",
                 id="body-null"),
    pytest.param(body(model=...), {}, "model: Field required", id="model-missing"),
    pytest.param(body(model=None), {}, "model: Field required", id="model-null"),
    pytest.param(body(model=5), {}, "model: Input should be a valid string", id="model-int"),
    pytest.param(body(stream="true"), {}, "stream: Input should be a valid boolean", id="stream-string"),
    pytest.param(body(stream=1), {}, "stream: Input should be a valid boolean", id="stream-int"),
    pytest.param(body(stop_sequences="stop"), {}, "stop_sequences: Input should be a valid list", id="stop-string"),
    pytest.param(body(stop_sequences=["a", 1]), {}, "stop_sequences.1: Input should be a valid string",
                 id="stop-item-int"),
    pytest.param(body(metadata="u"), {}, "metadata: Input should be a valid dictionary", id="metadata-string"),
    pytest.param(body(metadata={"user_id": 5}), {}, "metadata.user_id: Input should be a valid string",
                 id="metadata-user-id-int"),
    pytest.param(body(system=5), {}, "system: Input should be a valid string or a list of text blocks",
                 id="system-int"),
    pytest.param(body(system=["x"]), {}, "system.0: Input should be a valid dictionary", id="system-item-string"),
    pytest.param(body(system=[{"type": "image", "source": {}}]), {}, "system.0.type: Input should be 'text'",
                 id="system-item-image"),
    pytest.param(body(system=[{"type": "text", "text": None}]), {}, "system.0.text: Input should be a valid string",
                 id="system-text-null"),
    # -- messages -------------------------------------------------------------------------------------------------
    pytest.param(body(messages=...), {}, "messages: Field required", id="messages-missing"),
    pytest.param(body(messages={"role": "user"}), {}, "messages: Input should be a valid list", id="messages-dict"),
    pytest.param(body(messages=[]), {}, "messages: List should have at least 1 item after validation, not 0",
                 id="messages-empty"),
    pytest.param(body(messages=["Hi"]), {}, "messages.0: Input should be a valid dictionary", id="message-string"),
    pytest.param(body(messages=[{"content": "Hi"}]), {}, "messages.0.role: Field required", id="role-missing"),
    pytest.param(body(messages=[{"role": "human", "content": "Hi"}]), {},
                 "messages.0.role: Input should be 'user' or 'assistant'", id="role-unknown"),
    pytest.param(body(messages=[{"role": "user"}]), {}, "messages.0.content: Field required", id="content-missing"),
    pytest.param(body(messages=[{"role": "user", "content": 5}]), {},
                 "messages.0.content: Input should be a valid string or a list of content blocks", id="content-int"),
    pytest.param(body(messages=[{"role": "user", "content": None}]), {},
                 "messages.0.content: Input should be a valid string or a list of content blocks", id="content-null"),
    pytest.param(body(messages=msgs("")), {}, f"messages.0: {EMPTY_MESSAGE}", id="empty-string-content"),
    pytest.param(body(messages=msgs([])), {}, f"messages.0: {EMPTY_MESSAGE}", id="empty-list-content"),
    pytest.param(body(messages=msgs("Hi", "", "more")), {}, f"messages.1: {EMPTY_MESSAGE}",
                 id="empty-middle-assistant"),
    pytest.param(body(messages=msgs("Hi", "Hello", "")), {}, f"messages.2: {EMPTY_MESSAGE}",
                 id="empty-final-user"),
    pytest.param(body(messages=msgs([{"type": "text", "text": ""}])), {}, EMPTY_TEXT, id="empty-text-block"),
    pytest.param(body(messages=msgs([{"type": "text", "text": "ok"}, {"type": "text", "text": ""}])), {},
                 EMPTY_TEXT, id="empty-second-text-block"),
    pytest.param(body(messages=msgs([{"type": "text", "text": " \n\t "}])), {}, WHITESPACE_TEXT,
                 id="whitespace-text-block"),
    pytest.param(body(messages=msgs([{"type": "text", "text": "a"},
                                     {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}])), {},
                 "messages.0.content.1.text: cache_control cannot be set for empty text blocks",
                 id="empty-text-with-cache-control"),
    pytest.param(body(messages=msgs(["Hi"])), {}, "messages.0.content.0: Input should be a valid dictionary",
                 id="block-string"),
    pytest.param(body(messages=msgs([{"text": "Hi"}])), {}, "messages.0.content.0.type: Field required",
                 id="block-no-type"),
    pytest.param(body(messages=msgs([{"type": 3}])), {}, "messages.0.content.0.type: Input should be a valid string",
                 id="block-type-int"),
    pytest.param(body(messages=msgs([{"type": "text"}])), {}, "messages.0.content.0.text: Field required",
                 id="text-missing"),
    pytest.param(body(messages=msgs([{"type": "text", "text": ["a"]}])), {},
                 "messages.0.content.0.text: Input should be a valid string", id="text-list"),
    pytest.param(body(messages=msgs("Hi", [{"type": "tool_use", "name": "t", "input": {}}])), {},
                 "messages.1.content.0.tool_use.id: Field required", id="tool-use-no-id"),
    pytest.param(body(messages=msgs("Hi", [{"type": "tool_use", "id": "toolu_1", "input": {}}])), {},
                 "messages.1.content.0.tool_use.name: Field required", id="tool-use-no-name"),
    pytest.param(body(messages=msgs("Hi", [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": "{}"}])), {},
                 "messages.1.content.0.tool_use.input: Input should be a valid dictionary", id="tool-use-input-str"),
    pytest.param(body(messages=msgs([{"type": "tool_result", "content": "x"}])), {},
                 "messages.0.content.0.tool_result.tool_use_id: Field required", id="tool-result-no-id"),
    pytest.param(body(messages=msgs([{"type": "tool_result", "tool_use_id": 7}])), {},
                 "messages.0.content.0.tool_result.tool_use_id: Input should be a valid string",
                 id="tool-result-id-int"),
    pytest.param(body(messages=msgs([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}])), {},
                 "messages.0.content.0.tool_result.is_error: Input should be a valid boolean",
                 id="tool-result-is-error-string"),
    # -- tools and tool_choice ------------------------------------------------------------------------------------
    pytest.param(body(tools={"name": "t"}), {}, "tools: Input should be a valid list", id="tools-dict"),
    pytest.param(body(tools=["t"]), {}, "tools.0: Input should be a valid dictionary", id="tool-string"),
    pytest.param(body(tools=[{"input_schema": {}}]), {}, "tools.0.custom.name: Field required", id="tool-no-name"),
    pytest.param(body(tools=[{"name": "", "input_schema": {}}]), {},
                 "tools.0.custom.name: String should have at least 1 character", id="tool-empty-name"),
    pytest.param(body(tools=[{"name": 5, "input_schema": {}}]), {}, "tools.0.custom.name: Input should be a valid "
                 "string", id="tool-name-int"),
    pytest.param(body(tools=[{"name": "t"}]), {}, "tools.0.custom.input_schema: Field required", id="tool-no-schema"),
    pytest.param(body(tools=[{"type": "custom", "name": "t"}]), {}, "tools.0.custom.input_schema: Field required",
                 id="tool-custom-type-no-schema"),
    pytest.param(body(tools=[{"name": "t", "input_schema": []}]), {},
                 "tools.0.custom.input_schema: Input should be a valid dictionary", id="tool-schema-list"),
    pytest.param(body(tools=[{"name": "t", "input_schema": {}, "description": 1}]), {},
                 "tools.0.custom.description: Input should be a valid string", id="tool-description-int"),
    pytest.param(body(tools=[{"type": 20250124, "name": "bash"}]), {}, "tools.0.type: Input should be a valid string",
                 id="tool-type-int"),
    pytest.param(body(tool_choice="auto"), {}, "tool_choice: Input should be a valid dictionary",
                 id="tool-choice-string"),
    pytest.param(body(tool_choice={}), {}, "tool_choice.type: Field required", id="tool-choice-no-type"),
    pytest.param(body(tool_choice={"type": "required"}), {},
                 "tool_choice: Input tag 'required' found using 'type' does not match any of the expected tags: "
                 "'auto', 'any', 'tool', 'none'", id="tool-choice-unknown-type"),
    pytest.param(body(tool_choice={"type": "tool"}), {}, "tool_choice.tool.name: Field required",
                 id="tool-choice-tool-no-name"),
    pytest.param(body(tool_choice={"type": "tool", "name": 1}), {},
                 "tool_choice.tool.name: Input should be a valid string", id="tool-choice-tool-name-int"),
    pytest.param(body(tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}), {},
                 "tool_choice.auto.disable_parallel_tool_use: Input should be a valid boolean",
                 id="tool-choice-dptu-string"),
]


@pytest.mark.parametrize(("request_body", "kwargs", "message"), INVALID)
def test_invalid(request_body: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(request_body, **kwargs)
    assert caught.value.message == message
    assert str(caught.value) == message
    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"


UNANSWERED = re.compile(r"messages\.\d+: `tool_use` ids were found without `tool_result` blocks immediately after: "
                        r"(.*)\. Each `tool_use` block must have a corresponding `tool_result` block in the next "
                        r"message\.")


@pytest.mark.parametrize(
    ("messages", "missing"),
    [
        pytest.param(msgs("Hi", [tool_use("toolu_A")], "no results"), "toolu_A", id="string-next"),
        pytest.param(msgs("Hi", [tool_use("toolu_A")], [{"type": "text", "text": "no results"}]), "toolu_A",
                     id="text-next"),
        pytest.param(msgs("Hi", [tool_use("toolu_A"), tool_use("toolu_B")], [tool_result("toolu_B")]), "toolu_A",
                     id="one-of-two-answered"),
        pytest.param(msgs("Hi", [{"type": "text", "text": "checking"}, tool_use("toolu_A"), tool_use("toolu_B")],
                          [{"type": "text", "text": "none"}]), "toolu_A, toolu_B", id="two-unanswered"),
        pytest.param(msgs("Hi", [tool_use("toolu_A")], [tool_result("toolu_X")]), "toolu_A", id="wrong-id"),
        pytest.param(msgs("Hi", [tool_use("toolu_A")], [tool_result("toolu_A")], [tool_use("toolu_C")], "later"),
                     "toolu_C", id="second-turn"),
    ],
)
def test_tool_use_without_tool_result(messages: list[dict[str, Any]], missing: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(body(messages=messages))
    match = UNANSWERED.fullmatch(caught.value.message)
    assert match is not None, caught.value.message
    assert match.group(1) == missing


def test_tool_use_in_a_later_message_is_not_an_answer() -> None:
    # The results must be in the very next message, not the one after.
    messages = msgs("Hi", [tool_use("toolu_A")], "wait", "ok", [tool_result("toolu_A")])
    with pytest.raises(InvalidRequest, match="toolu_A"):
        validate_request(body(messages=messages))


@pytest.mark.parametrize("bad_id", [["toolu_A"], {"id": "toolu_A"}], ids=["list", "dict"])
def test_unhashable_tool_use_id_after_tool_use(bad_id: object) -> None:
    # Found by the nested property test below: this once raised TypeError (unhashable) instead of a 400.
    messages = msgs("Hi", [tool_use("toolu_A")], [{"type": "tool_result", "tool_use_id": bad_id}])
    with pytest.raises(InvalidRequest) as caught:
        validate_request(body(messages=messages))
    match = UNANSWERED.fullmatch(caught.value.message)  # an id that is not a string answers nothing
    assert match is not None and match.group(1) == "toolu_A", caught.value.message


# -- valid bodies -----------------------------------------------------------------------------------------------

VALID: list[Any] = [
    pytest.param(SEED, {}, id="seed-example-max-tokens-2048"),
    pytest.param(body(messages=msgs("Hi", "")), {}, id="final-assistant-prefill-empty-string"),
    pytest.param(body(messages=msgs("Hi", [])), {}, id="final-assistant-prefill-empty-list"),
    pytest.param(body(messages=msgs("Hi", [{"type": "text", "text": ""}])), {}, id="final-assistant-empty-text"),
    pytest.param(body(messages=msgs("Hi", "The answer is")), {}, id="final-assistant-prefill"),
    pytest.param(body(output_config={"effort": "high"}, service_tier="auto", container=None, inference_geo="us",
                      context_management={"edits": []}, cache_control={"type": "ephemeral"},
                      some_field_from_2027={"x": [1, 2]}), {}, id="unknown-top-level-fields"),
    pytest.param(body(messages=msgs([
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
        {"type": "future_block_2027", "anything": [1, {"nested": True}]},
        {"type": "text", "text": "what is this?", "citations": None, "cache_control": {"type": "ephemeral"}},
    ])), {}, id="unknown-block-types"),
    pytest.param(body(tools=[{"type": "bash_20250124", "name": "bash"},
                             {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool",
                              "max_characters": 10000},
                             {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
                             {"type": "custom", "name": "t", "input_schema": {"type": "object"}}]), {},
                 id="anthropic-defined-tools"),
    pytest.param(body(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 16000}, tools=TOOLS),
                 {"betas": "interleaved-thinking-2025-05-14"}, id="interleaved-thinking-budget-over-max"),
    pytest.param(body(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 4000}, tools=TOOLS),
                 {"betas": "fine-grained-tool-streaming-2025-05-14,interleaved-thinking-2025-05-14"},
                 id="interleaved-thinking-among-betas"),
    pytest.param(body(max_tokens=1025, thinking={"type": "enabled", "budget_tokens": 1024}), {},
                 id="budget-1024-max-1025"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, temperature=1), {}, id="thinking-temperature-1"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, temperature=1.0, tools=TOOLS,
                      tool_choice={"type": "auto"}), {}, id="thinking-tool-choice-auto"),
    pytest.param(body(max_tokens=4000, thinking=THINKING, tools=TOOLS, tool_choice={"type": "none"}), {},
                 id="thinking-tool-choice-none"),
    pytest.param(body(thinking={"type": "disabled"}, temperature=0.2, tools=TOOLS, tool_choice={"type": "any"}), {},
                 id="thinking-disabled"),
    pytest.param(body(thinking={"type": "adaptive", "display": "omitted"}), {}, id="thinking-adaptive"),
    pytest.param(body(temperature=0, top_p=1, top_k=0), {}, id="range-bounds"),
    pytest.param(body(temperature=None, top_p=None, top_k=None, stop_sequences=None, metadata=None, system=None,
                      tools=None, tool_choice=None, thinking=None, stream=None), {}, id="nulls"),
    pytest.param(body(model="claude-opus-4-5-20251101", max_tokens=64000), {"max_tokens_cap": 64000},
                 id="max-tokens-at-cap"),
    pytest.param(body(messages=msgs("Hi", [tool_use("toolu_A"), tool_use("toolu_B")],
                                    [tool_result("toolu_B"), tool_result("toolu_A"), {"type": "text", "text": "go"}],
                                    "done")), {}, id="tool-results-answered"),
    pytest.param(body(messages=msgs("Hi", [{"type": "text", "text": "let me check"}, tool_use("toolu_A")])), {},
                 id="tool-use-in-final-assistant"),
    pytest.param(body(messages=[{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}]), {},
                 id="consecutive-user-turns"),
    pytest.param(body(messages=[{"role": "user", "content": "Hi"},
                                {"role": "system", "content": [{"type": "text", "text": "be brief"}]}]), {},
                 id="mid-conversation-system-role"),
    pytest.param(body(system=[{"type": "text", "text": "terse", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                      metadata={"user_id": None}, stop_sequences=[]), {}, id="system-blocks"),
]


@pytest.mark.parametrize(("request_body", "kwargs"), VALID)
def test_valid(request_body: dict[str, Any], kwargs: dict[str, Any]) -> None:
    snapshot = copy.deepcopy(request_body)
    info = validate_request(request_body, **kwargs)
    assert info == RequestInfo(model=request_body["model"], stream=bool(request_body.get("stream")),
                               max_tokens=request_body["max_tokens"], fetches=info.fetches, images=info.images)
    assert request_body == snapshot  # validation never changes the body it forwards


def test_seed_example_as_published_is_rejected_for_its_budget() -> None:
    # The seed page's own example has budget_tokens 1025 with max_tokens 1024.
    with pytest.raises(InvalidRequest) as caught:
        validate_request(dict(SEED, max_tokens=1024))
    assert caught.value.message == BUDGET_NOT_BELOW_MAX


def test_request_info_stream_and_model() -> None:
    assert validate_request(body(stream=True, model="x-model", max_tokens=7)) == RequestInfo("x-model", True, 7)


def test_count_tokens_needs_no_max_tokens_and_skips_budget_rule() -> None:
    counted = body(max_tokens=..., thinking={"type": "enabled", "budget_tokens": 5000})
    assert validate_request(counted, count_tokens=True) == RequestInfo("claude-sonnet-4-6", False, 0)
    with pytest.raises(InvalidRequest, match="max_tokens: Field required"):
        validate_request(counted)
    # The other thinking rules still hold for count_tokens.
    with pytest.raises(InvalidRequest) as caught:
        validate_request(dict(counted, thinking={"type": "enabled", "budget_tokens": 10}), count_tokens=True)
    assert caught.value.message == BUDGET_TOO_SMALL


def test_no_cap_without_max_tokens_cap() -> None:
    assert validate_request(body(max_tokens=10_000_000)).max_tokens == 10_000_000


# -- property tests: never anything but InvalidRequest ------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def returns_or_rejects(value: object, **kwargs: Any) -> None:
    try:
        info = validate_request(value, **kwargs)
    except InvalidRequest as exc:
        assert exc.message
        return
    assert isinstance(info, RequestInfo)


@PROPERTY
@given(JSON)
def test_arbitrary_json_is_returned_or_rejected(value: object) -> None:
    returns_or_rejects(value)
    returns_or_rejects(value, count_tokens=True)


@PROPERTY
@given(st.sampled_from(sorted(SEED)), JSON, st.booleans())
def test_seed_with_one_field_replaced(field: str, value: object, count_tokens: bool) -> None:
    mutated = dict(SEED)
    mutated[field] = value
    returns_or_rejects(mutated, count_tokens=count_tokens, max_tokens_cap=64000)


RICH: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 4096,
    "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
    "metadata": {"user_id": "u"},
    "stop_sequences": ["x"],
    "temperature": 1,
    "top_k": 3,
    "stream": True,
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}, tool_use("toolu_1")]},
        {"role": "user", "content": [dict(tool_result("toolu_1"), is_error=False)]},
        {"role": "assistant", "content": "prefill"},
    ],
    "tools": [{"name": "t", "input_schema": {"type": "object"}, "description": "d"},
              {"type": "bash_20250124", "name": "bash"}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
}


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, (*prefix, i))
    return out


RICH_PATHS = _paths(RICH)
WORDS = st.sampled_from(["user", "assistant", "system", "text", "tool_use", "tool_result", "toolu_1", "enabled",
                         "adaptive", "disabled", "auto", "any", "tool", "none", "", " ", "custom"])
JSON_WITH_WORDS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text() | WORDS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "text", "id", "name", "input", "role", "content", "tool_use_id"])
                      | st.text(max_size=3), children, max_size=4),
    max_leaves=15,
)


@PROPERTY
@given(st.sampled_from(RICH_PATHS), JSON_WITH_WORDS, st.booleans())
def test_rich_body_with_one_nested_value_replaced_or_removed(path: tuple[str | int, ...], value: object,
                                                              remove: bool) -> None:
    assert validate_request(RICH, betas="interleaved-thinking-2025-05-14").model == "claude-sonnet-4-6"
    mutated = copy.deepcopy(RICH)
    parent: Any = mutated
    for step in path[:-1]:
        parent = parent[step]
    if remove and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    returns_or_rejects(mutated, betas="interleaved-thinking-2025-05-14")


# -- content the upstream fetches (its input is not bounded by the body's size) -----------------------------

URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
INLINE_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}


@pytest.mark.parametrize(("request_body", "fetches"), [
    (body(), False),
    (body(messages=[{"role": "user", "content": [INLINE_IMAGE]}]), False),
    (body(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}}]}]),
     True),
    (body(messages=[{"role": "user", "content": [URL_IMAGE]}]), True),
    (body(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "file", "file_id": "file_1"}}]}]), True),
    (body(messages=msgs([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                        [{"type": "tool_result", "tool_use_id": "t1", "content": [URL_IMAGE]}])[1:]), True),
    (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), True),
    (body(tools=[{"type": "bash_20250124", "name": "bash"}]), False),
    (body(mcp_servers=[{"type": "url", "url": "https://mcp.example.com", "name": "x"}]), True),
])
def test_fetches(request_body: dict[str, Any], fetches: bool) -> None:
    assert validate_request(request_body).fetches is fetches


def test_inline_images_are_counted_and_documents_other_than_text_are_unbounded() -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}}
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}}
    info = validate_request(body(messages=[{"role": "user", "content": [INLINE_IMAGE, INLINE_IMAGE, text]}]))
    assert (info.images, info.fetches) == (2, False)
    # A PDF's pages cost far more tokens than their bytes: only the context window bounds them.
    assert validate_request(body(messages=[{"role": "user", "content": [pdf]}])).fetches is True
    nested = msgs([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                  [{"type": "tool_result", "tool_use_id": "t1", "content": [INLINE_IMAGE]}])[1:]
    assert validate_request(body(messages=nested)).images == 1
