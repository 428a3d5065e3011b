"""to_chat_request: golden Anthropic -> Chat Completions pairs, edge rules, and properties of any valid request.

A golden file ``tests/fixtures/translation/request/<case>.json`` holds ``options`` (a server family plus
switch overrides), the ``anthropic`` body, the expected ``openai`` body, and optionally the upstream
``model`` (default ``upstream-model``) and ``names`` (outbound tool name -> client name).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.errors import InvalidRequest
from tollway.protocol.validate import validate_request
from tollway.providers.openai.names import ToolNames
from tollway.providers.openai.request import budget_effort, to_chat_request
from tollway.upstream_options import FAMILIES, FAMILY_DEFAULTS, OpenAIOptions, options_for

GOLDEN = Path(__file__).parents[2] / "fixtures" / "translation" / "request"
GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))
GENERIC = FAMILY_DEFAULTS["generic"]


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def translate(payload: dict[str, Any], options: OpenAIOptions = GENERIC, names: ToolNames | None = None,
              model: str = "upstream-model") -> dict[str, Any]:
    return to_chat_request(payload, model=model, options=options, stream=bool(payload.get("stream")),
                           names=names or ToolNames())


def body(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages, **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object", "properties": {}}}


# Golden pairs


def test_golden_files_cover_the_cases():
    names = {p.stem for p in GOLDEN_FILES}
    required = {"text_and_system", "billing_header_dropped", "mid_conversation_system", "images", "documents",
                "tool_result_then_text", "parallel_tool_results", "tool_result_error", "tool_result_images",
                "interrupted_tool_use", "tool_reference", "thinking_enabled_reasoning_effort",
                "thinking_deepseek_adaptive", "thinking_openrouter_budget", "thinking_request_none",
                "tool_choice_auto_no_parallel", "tool_choice_any", "tool_choice_none", "tool_choice_tool",
                "server_tools_dropped", "server_tools_only", "empty_tools", "mcp_long_names", "long_tool_ids",
                "stop_sequences_truncated", "top_k_sent", "max_tokens_capped", "user_id_hashed", "response_format",
                "claude_code_openai", "claude_code_deepseek_tool_turn"}
    assert required <= names


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    case = load(path)
    overrides = dict(case["options"])
    options = options_for(overrides.pop("family"), overrides)
    payload = case["anthropic"]
    validate_request(payload)  # every golden input is a body Tollway would accept
    before = copy.deepcopy(payload)
    names = ToolNames()
    out = to_chat_request(payload, model=case.get("model", "upstream-model"), options=options,
                          stream=bool(payload.get("stream")), names=names)
    assert out == case["openai"]
    assert payload == before
    json.dumps(out, allow_nan=False)
    for short, original in case.get("names", {}).items():
        assert names.inbound(short) == original


# Top-level fields


def test_model_comes_from_the_argument_and_stream_false_sends_nothing():
    out = translate(body([user("hi")], stream=False), model="qwen3-coder")
    assert out["model"] == "qwen3-coder"
    assert "stream" not in out and "stream_options" not in out


@pytest.mark.parametrize(("asked", "cap", "sent"), [(100, None, 100), (100, 50, 50), (100, 100, 100), (10, 8192, 10)])
def test_max_tokens_cap(asked: int, cap: int | None, sent: int) -> None:
    options = options_for("generic", {"max_output_tokens": cap})
    assert translate(body([user("hi")], max_tokens=asked), options)["max_tokens"] == sent


def test_empty_user_id_and_stop_sequences_send_nothing():
    out = translate(body([user("hi")], metadata={"user_id": ""}, stop_sequences=[]))
    assert "user" not in out and "stop" not in out
    assert "user" not in translate(body([user("hi")], metadata={"user_id": None}))


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"),
                                                (16384, "high"), (100_000, "high")])
def test_budget_buckets(budget: int, effort: str) -> None:
    assert budget_effort(budget) == effort
    out = translate(body([user("hi")], max_tokens=200_000, thinking={"type": "enabled", "budget_tokens": budget}))
    assert out["reasoning_effort"] == effort


@pytest.mark.parametrize(("effort", "openai", "deepseek", "openrouter"), [
    ("low", "low", "low", "low"), ("medium", "medium", "high", "medium"), ("high", "high", "high", "high"),
    ("xhigh", "high", "high", "high"), ("max", "high", "max", "high"), (None, "medium", "high", "medium"),
    ("unheard-of", "medium", "high", "medium"),
])
def test_adaptive_effort_per_request_kind(effort: str | None, openai: str, deepseek: str, openrouter: str) -> None:
    fields: dict[str, Any] = {"thinking": {"type": "adaptive"}}
    if effort is not None:
        fields["output_config"] = {"effort": effort}
    payload = body([user("hi")], **fields)
    assert translate(payload, FAMILY_DEFAULTS["openai"])["reasoning_effort"] == openai
    out = translate(payload, FAMILY_DEFAULTS["deepseek"])
    assert (out["thinking"], out["reasoning_effort"]) == ({"type": "enabled"}, deepseek)
    assert translate(payload, FAMILY_DEFAULTS["openrouter"])["reasoning"] == {"effort": openrouter}
    assert not {"reasoning_effort", "reasoning", "thinking"} & set(translate(payload, FAMILY_DEFAULTS["lmstudio"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_effort_without_thinking_sends_nothing(family: str) -> None:
    out = translate(body([user("hi")], output_config={"effort": "high"}), FAMILY_DEFAULTS[family])
    assert not {"reasoning_effort", "reasoning", "thinking"} & set(out)


# Tools and tool_choice


def test_forcing_a_dropped_server_tool_is_refused():
    payload = body([user("search")], tools=[{"type": "web_search_20250305", "name": "web_search"}, tool("calc")],
                   tool_choice={"type": "tool", "name": "web_search"})
    with pytest.raises(InvalidRequest, match=r"web_search.*server tool"):
        translate(payload)


def test_any_with_only_server_tools_is_refused_but_not_with_a_function_left():
    server = {"type": "web_fetch_20250910", "name": "web_fetch"}
    with pytest.raises(InvalidRequest, match="web_fetch"):
        translate(body([user("go")], tools=[server], tool_choice={"type": "any"}))
    out = translate(body([user("go")], tools=[server, tool("calc")], tool_choice={"type": "any"}))
    assert out["tool_choice"] == "required"
    assert [t["function"]["name"] for t in out["tools"]] == ["calc"]


def test_auto_and_none_with_only_server_tools_just_drop_them():
    for choice in ({"type": "auto"}, {"type": "none"}):
        out = translate(body([user("go")], tools=[{"type": "bash_20250124", "name": "bash"}], tool_choice=choice))
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(out)


def test_tool_without_schema_gets_an_empty_object_schema():
    out = translate(body([user("go")], tools=[{"name": "noop", "input_schema": {}}]))
    assert out["tools"] == [{"type": "function", "function": {"name": "noop",
                                                              "parameters": {"type": "object", "properties": {}}}}]


def test_schema_cleaning_follows_the_option():
    schema = {"type": "object", "properties": {"u": {"type": "string", "format": "uri", "default": "x"}}}
    payload = body([user("go")], tools=[{"name": "f", "input_schema": schema}])
    params = {mode: translate(payload, options_for("generic", {"schema_cleaning": mode}))["tools"][0]["function"]
              ["parameters"]["properties"]["u"] for mode in ("none", "openai", "gemini")}
    assert params == {"none": {"type": "string", "format": "uri", "default": "x"},
                      "openai": {"type": "string", "default": "x"}, "gemini": {"type": "string"}}


def test_one_tool_names_object_serves_tools_history_and_choice():
    long_name = "mcp__" + "x" * 70
    names = ToolNames()
    out = translate(body([user("a"), assistant([{"type": "tool_use", "id": "toolu_1", "name": long_name, "input": {}}]),
                          user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}])],
                         tools=[tool(long_name)], tool_choice={"type": "tool", "name": long_name}), names=names)
    short = out["tools"][0]["function"]["name"]
    assert len(short) <= 64 and short != long_name
    assert out["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert out["tool_choice"]["function"]["name"] == short
    assert names.inbound(short) == long_name


# Conversation shapes


def test_user_text_before_results_still_goes_after_the_tool_messages():
    out = translate(body([user("a"), assistant([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]),
                          user([{"type": "text", "text": "note"},
                                {"type": "tool_result", "tool_use_id": "t1", "content": "r"}])]))
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool", "user"]
    assert out["messages"][-1]["content"] == "note"


def test_a_tool_result_without_a_call_becomes_user_text():
    # Anthropic itself refuses this; the upstream would refuse a tool message that answers nothing.
    out = translate(body([user("a"), assistant("b"),
                          user([{"type": "tool_result", "tool_use_id": "ghost", "content": "late"}])]))
    assert out["messages"][-1] == {"role": "user", "content": "[tool result]\nlate"}


def test_a_missing_result_among_several_gets_no_result():
    out = translate(body([user("a"), assistant([{"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                                                {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]),
                          user([{"type": "tool_result", "tool_use_id": "t2", "content": "two"}])]))
    assert out["messages"][2:] == [{"role": "tool", "tool_call_id": "t2", "content": "two"},
                                   {"role": "tool", "tool_call_id": "t1", "content": "(no result)"}]


def test_no_result_comes_before_the_rest_of_the_user_turn():
    out = translate(body([user("a"), assistant([{"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                                                {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]),
                          user([{"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                                {"type": "text", "text": "and the other?"}])]))
    assert out["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": "one"},
                                   {"role": "tool", "tool_call_id": "t2", "content": "(no result)"},
                                   {"role": "user", "content": "and the other?"}]


def test_final_assistant_prefill_kept_but_an_empty_one_dropped():
    out = translate(body([user("a"), assistant([{"type": "text", "text": "The answer is"}])]))
    assert out["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    for empty in ("", [], [{"type": "text", "text": "  "}], [{"type": "redacted_thinking", "data": "x"}]):
        out = translate(body([user("a"), assistant(empty)]))
        assert out["messages"] == [{"role": "user", "content": "a"}]


def test_assistant_with_only_thinking_keeps_it_when_the_field_exists():
    thinking = [{"type": "thinking", "thinking": "hmm", "signature": "s"}]
    out = translate(body([user("a"), assistant(thinking), user("b")]))
    assert out["messages"][1] == {"role": "assistant", "content": "", "reasoning_content": "hmm"}
    out = translate(body([user("a"), assistant(thinking), user("b")]), FAMILY_DEFAULTS["openai"])
    assert [m["role"] for m in out["messages"]] == ["user", "user"]


def test_server_tool_blocks_and_unknown_blocks_are_dropped():
    history = assistant([
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "text", "text": "Found it.", "citations": [{"type": "web_search_result_location", "url": "u"}]},
        {"type": "compaction", "content": "..."}])
    out = translate(body([user([{"type": "text", "text": "a"}, {"type": "container_upload", "file_id": "f"},
                                {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                                {"type": "document", "source": {"type": "file", "file_id": "file_2"}},
                                {"type": "brand_new_block", "x": 1}]),
                          history, user("b")]))
    assert out["messages"] == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "Found it."},
                               {"role": "user", "content": "b"}]


def test_mid_conv_system_block_and_system_whitespace():
    out = translate(body([user([{"type": "mid_conv_system", "content": [{"type": "text", "text": "Be kind."}]},
                                {"type": "text", "text": "hello"}])], system=[{"type": "text", "text": " "}]))
    assert out["messages"] == [{"role": "user", "content": "<system-reminder>\nBe kind.\n</system-reminder>\nhello"}]
    assert translate(body([user("x")], system="  \n"))["messages"][0]["role"] == "user"


def test_system_message_first_folds_into_the_first_user_turn():
    out = translate(body([{"role": "system", "content": "Rules."}, user("hi")]))
    assert out["messages"] == [{"role": "user", "content": "<system-reminder>\nRules.\n</system-reminder>\nhi"}]


def test_non_ascii_tool_input_stays_readable():
    out = translate(body([user("a"), assistant([{"type": "tool_use", "id": "t", "name": "f",
                                                 "input": {"q": "Zürich 東京", "n": [1, 2.5, None, True]}}])]))
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"q":"Zürich 東京","n":[1,2.5,null,true]}'


def test_same_request_translates_the_same_way_twice():
    case = load(GOLDEN / "claude_code_deepseek_tool_turn.json")
    options = FAMILY_DEFAULTS["deepseek"]
    assert translate(case["anthropic"], options) == translate(case["anthropic"], options)


# Properties of any valid request

TOP_LEVEL = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "temperature",
             "top_p", "top_k", "stop", "user", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort",
             "thinking", "reasoning", "response_format"}
MESSAGE_KEYS = {"system": {"role", "content"}, "user": {"role", "content"}, "tool": {"role", "tool_call_id", "content"},
                "assistant": {"role", "content", "tool_calls", "reasoning_content", "reasoning"}}
PART_KEYS = {"text": {"type", "text"}, "image_url": {"type", "image_url"}, "file": {"type", "file"}}
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
CALL_ID = re.compile(r"[a-zA-Z0-9_-]{1,40}")
SERVER_TOOLS = [{"type": "web_search_20250305", "name": "web_search"}, {"type": "bash_20250124", "name": "bash"},
                {"type": "code_execution_20250825", "name": "code_execution"}, {"type": "mcp_toolset",
                                                                               "mcp_server_name": "gh"}]
IMAGE: dict[str, Any] = {"type": "image",
                         "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
CACHE = {"cache_control": {"type": "ephemeral"}}

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
solid_text = words.filter(lambda s: bool(s.strip()))
any_text = st.text(max_size=6)
tool_names = st.one_of(st.sampled_from(["Bash", "Read", "get_weather"]),
                       st.builds(lambda a, b: f"mcp__{a}__{b}", words, words),
                       st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-:", min_size=55, max_size=90))
id_stems = st.one_of(st.just("toolu_01"), st.just("call_"), st.text(min_size=1, max_size=60))


def with_cache(block: dict[str, Any], cached: bool) -> dict[str, Any]:
    return {**block, **CACHE} if cached else block


@st.composite
def user_blocks(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "image", "pdf", "textdoc", "contentdoc", "search", "thinking", "reminder"]))
    block: dict[str, Any]
    if kind == "text":
        block = {"type": "text", "text": draw(solid_text)}
    elif kind == "image":
        block = IMAGE if draw(st.booleans()) else {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}
    elif kind == "pdf":
        block = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
    elif kind == "textdoc":
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": draw(any_text)}}
    elif kind == "contentdoc":
        block = {"type": "document", "source": {"type": "content", "content": [
            {"type": "text", "text": draw(any_text)}, IMAGE, {"type": "text", "text": draw(any_text)}]}}
    elif kind == "search":
        block = {"type": "search_result", "source": "https://s", "title": draw(any_text),
                 "content": [{"type": "text", "text": draw(any_text)}]}
    elif kind == "thinking":
        block = {"type": "thinking", "thinking": draw(any_text), "signature": "sig"}
    else:
        block = {"type": "mid_conv_system", "content": [{"type": "text", "text": draw(any_text)}]}
    return with_cache(block, draw(st.booleans()))


@st.composite
def tool_results(draw: st.DrawFn, tool_use_id: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = draw(st.one_of(
        st.none(), any_text,
        st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, any_text), st.just(IMAGE),
                           st.builds(lambda n: {"type": "tool_reference", "tool_name": n}, tool_names)), max_size=3)))
    if content is not None:
        block["content"] = content
    if draw(st.booleans()):
        block["is_error"] = draw(st.booleans())
    return with_cache(block, draw(st.booleans()))


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A valid Anthropic body, and the names of its custom tools in order."""
    names = draw(st.lists(tool_names, max_size=4, unique=True))
    tools: list[dict[str, Any]] = [with_cache(tool(n), draw(st.booleans())) for n in names]
    tools += draw(st.lists(st.sampled_from(SERVER_TOOLS), max_size=2, unique_by=lambda t: t["type"]))
    tools = draw(st.permutations(tools))
    names = [t["name"] for t in tools if "type" not in t]
    fields: dict[str, Any] = {}
    send_empty_list: bool = draw(st.booleans())
    if tools or send_empty_list:
        fields["tools"] = tools
    choices: list[dict[str, Any] | None] = [None, {"type": "auto"}, {"type": "none"}]
    if names:
        choices += [{"type": "any"}, {"type": "tool", "name": names[0]}]
    choice: dict[str, Any] | None = draw(st.sampled_from(choices))
    if choice is not None:
        if choice["type"] != "none" and draw(st.booleans()):
            choice = {**choice, "disable_parallel_tool_use": draw(st.booleans())}
        fields["tool_choice"] = choice
    max_tokens = draw(st.integers(2048, 64000))
    if choice is None or choice["type"] in ("auto", "none"):
        thinking = draw(st.one_of(st.none(), st.just({"type": "adaptive"}), st.just({"type": "disabled"}),
                                  st.builds(lambda b: {"type": "enabled", "budget_tokens": b},
                                            st.integers(1024, max_tokens - 1))))
        if thinking is not None:
            fields["thinking"] = thinking
    if draw(st.booleans()):
        fields["output_config"] = {"effort": draw(st.sampled_from(["low", "medium", "high", "xhigh", "max"]))}
    if draw(st.booleans()):
        fields["system"] = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=00000;"},
                            {"type": "text", "text": draw(solid_text), **CACHE}]
    fields.update(draw(st.fixed_dictionaries({}, optional={
        "stop_sequences": st.lists(words, max_size=6), "metadata": st.builds(lambda u: {"user_id": u}, words),
        "top_k": st.integers(0, 100), "top_p": st.floats(0, 1), "stream": st.booleans(),
        "context_management": st.just({"edits": []}), "service_tier": st.just("auto"), "container": st.just("c"),
        "inference_geo": st.just("us"), "speed": st.just("fast"), "cache_control": st.just(CACHE["cache_control"])})))

    messages: list[dict[str, Any]] = []
    counter = 0
    open_ids: list[str] = []
    for turn in range(draw(st.integers(1, 4))):
        blocks = [draw(tool_results(i)) for i in open_ids] + draw(st.lists(user_blocks(), max_size=3))
        if not any(b["type"] == "text" for b in blocks) and not open_ids:
            blocks.append({"type": "text", "text": draw(solid_text)})
        messages.append(user(draw(st.permutations(blocks))))
        if draw(st.integers(0, 3)) == 0:
            messages.append({"role": "system", "content": draw(st.one_of(solid_text, st.just([{"type": "text",
                                                                                                "text": "note"}])))})
        open_ids = []
        if turn and draw(st.integers(0, 3)) == 0:
            break
        ablocks: list[dict[str, Any]] = []
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["text", "thinking", "redacted", "tool_use", "tool_use"]))
            if kind == "text":
                ablocks.append({"type": "text", "text": draw(solid_text)})
            elif kind == "thinking":
                ablocks.append({"type": "thinking", "thinking": draw(any_text), "signature": "sig"})
            elif kind == "redacted":
                ablocks.append({"type": "redacted_thinking", "data": "opaque"})
            else:
                counter += 1
                tid = f"{draw(id_stems)}{counter}"
                open_ids.append(tid)
                ablocks.append(with_cache({"type": "tool_use", "id": tid, "name": draw(tool_names),
                                           "input": draw(st.dictionaries(words, st.integers() | words, max_size=2))},
                                          draw(st.booleans())))
        if not ablocks:
            ablocks.append({"type": "text", "text": draw(solid_text)})
        messages.append(assistant(ablocks))
    # The loop may end on an assistant turn with open tool calls: an interrupted turn.
    return body(messages, max_tokens=max_tokens, **fields), names


def check_conversation(messages: list[dict[str, Any]]) -> None:
    for i, message in enumerate(messages):
        role = message["role"]
        assert set(message) <= MESSAGE_KEYS[role], message
        assert role != "system" or i == 0
        content = message.get("content")
        if isinstance(content, list):
            assert content and role == "user"
            for part in content:
                assert set(part) == PART_KEYS[part["type"]], part
                assert part["type"] != "text" or part["text"].strip()
        else:
            assert isinstance(content, str) or (content is None and message.get("tool_calls"))
        if role == "tool":
            # Only directly after an assistant's calls (or another such tool message), answering one of them.
            j = i - 1
            while messages[j]["role"] == "tool":
                j -= 1
            assert messages[j]["role"] == "assistant"
            assert message["tool_call_id"] in {c["id"] for c in messages[j].get("tool_calls", [])}
        calls = message.get("tool_calls") or []
        answered = [m["tool_call_id"] for m in messages[i + 1:i + 1 + len(calls)] if m["role"] == "tool"]
        assert sorted(answered) == sorted(c["id"] for c in calls)
        for call in calls:
            assert set(call) == {"id", "type", "function"} and call["type"] == "function"
            assert CALL_ID.fullmatch(call["id"]) and FUNCTION_NAME.fullmatch(call["function"]["name"])
            assert isinstance(json.loads(call["function"]["arguments"]), dict)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from(FAMILIES))
def test_any_valid_request_gives_a_well_formed_chat_request(case: tuple[dict[str, Any], list[str]],
                                                            family: str) -> None:
    payload, custom = case
    validate_request(payload)  # the strategy only builds bodies the gateway accepts
    before = copy.deepcopy(payload)
    names = ToolNames()
    options = FAMILY_DEFAULTS[family]
    out = translate(payload, options, names)
    assert payload == before
    assert set(out) <= TOP_LEVEL
    json.dumps(out, allow_nan=False)
    check_conversation(out["messages"])
    assert "cache_control" not in json.dumps(out)
    # Every image reaches the upstream once, wherever it was (user turn, tool result, document).
    assert json.dumps(out).count(IMAGE["source"]["data"]) == json.dumps(payload).count(IMAGE["source"]["data"])
    functions = [t["function"]["name"] for t in out.get("tools", [])]
    assert all(FUNCTION_NAME.fullmatch(n) for n in functions)
    assert [names.inbound(n) for n in functions] == custom
    if not functions:
        assert not {"tool_choice", "parallel_tool_calls"} & set(out)
    if isinstance(out.get("tool_choice"), dict):
        assert out["tool_choice"]["function"]["name"] in functions
    assert out.get(options.max_tokens_field, 0) <= (options.max_output_tokens or payload["max_tokens"])
    if options.max_stop_sequences is not None:
        assert len(out.get("stop", [])) <= options.max_stop_sequences
    assert "top_k" not in out or options.send_top_k
    if "user" in out:
        assert re.fullmatch(r"[0-9a-f]{64}", out["user"])
