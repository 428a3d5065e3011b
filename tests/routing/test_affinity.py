"""Cache affinity: the conversation digest and weighted rendezvous hashing."""

from __future__ import annotations

import copy
import hashlib
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.routing.affinity import DIGEST_SIZE, affinity_key, rendezvous_order

MARK = {"type": "ephemeral"}
LONG_SYSTEM = "You are an interactive CLI tool. " * 500  # ~16 KB, past the hashed head and tail


def billing(cch: str) -> dict[str, Any]:
    text = f"x-anthropic-billing-header: cc_version=2.1.181.7c3; cc_entrypoint=cli; cch={cch};"
    return {"type": "text", "text": text}


def claude_code_turn(turn: int, *, prompt: str = "what does README.md say about installing?",
                     model: str = "claude-sonnet-4-5", cch: str = "00000") -> dict[str, Any]:
    """Turn ``turn`` (1-based) of a Claude Code conversation, shaped as Claude Code sends it."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\ncontext\n</system-reminder>\n"},
        {"type": "text", "text": prompt},
    ]}]
    for i in range(1, turn):
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"reading file {i}"},
            {"type": "tool_use", "id": f"toolu_{i}", "name": "Read", "input": {"file_path": f"/f{i}"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"contents {i}"},
        ]})
    # The breakpoint sits on the latest message only, so it moves on every turn.
    messages[-1]["content"][-1]["cache_control"] = MARK
    return {
        "model": model,
        "max_tokens": 32000,
        "system": [
            billing(cch),
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": MARK},
            {"type": "text", "text": LONG_SYSTEM + "\n<env>\nWorking directory: /home/me/project\n</env>",
             "cache_control": MARK},
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {}}},
            {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {}}},
        ],
        "messages": messages,
    }


def unmarked(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with every cache_control removed, at any depth."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "cache_control"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    result: dict[str, Any] = strip(payload)
    return result


# --- affinity_key: one conversation, one key ---------------------------------------------------------

def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    # Each turn moves the breakpoint off the first message and changes the attribution checksum.
    keys = {affinity_key(claude_code_turn(turn, cch=f"{turn:05d}")) for turn in range(1, 9)}
    assert len(keys) == 1
    key = keys.pop()
    assert isinstance(key, bytes) and len(key) == DIGEST_SIZE


def test_first_turn_breakpoint_on_the_first_message_is_ignored() -> None:
    first = claude_code_turn(1)
    assert "cache_control" in first["messages"][0]["content"][-1]
    second = claude_code_turn(2)
    assert "cache_control" not in second["messages"][0]["content"][-1]
    assert affinity_key(first) == affinity_key(second)


def test_string_and_block_forms_hash_alike() -> None:
    as_blocks = {"model": "m", "system": [{"type": "text", "text": "sys", "cache_control": MARK}],
                 "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    as_strings = {"model": "m", "system": "sys", "cache_control": MARK,
                  "messages": [{"role": "user", "content": "hi"}]}
    assert affinity_key(as_blocks) == affinity_key(as_strings) is not None


def test_key_order_inside_blocks_does_not_matter() -> None:
    a = claude_code_turn(2)
    b = copy.deepcopy(a)
    b["messages"][0]["content"] = [dict(reversed(list(block.items()))) for block in b["messages"][0]["content"]]
    assert list(a["messages"][0]["content"][0]) != list(b["messages"][0]["content"][0])
    assert affinity_key(a) == affinity_key(b)


def test_later_messages_and_request_options_do_not_matter() -> None:
    base = claude_code_turn(3)
    other = copy.deepcopy(base)
    other["messages"][2]["content"][0]["text"] = "something else entirely"
    other.update(max_tokens=1, temperature=0.2, stream=True, metadata={"user_id": "u"})
    assert affinity_key(base) == affinity_key(other)


def test_first_user_message_is_found_after_a_leading_assistant_message() -> None:
    a = claude_code_turn(2)
    b = copy.deepcopy(a)
    b["messages"].insert(0, {"role": "assistant", "content": "prefill"})
    assert affinity_key(a) == affinity_key(b)


# --- affinity_key: different conversations, different keys --------------------------------------------

def test_different_first_messages_give_different_keys() -> None:
    keys = {affinity_key(claude_code_turn(3, prompt=f"task number {i}")) for i in range(200)}
    assert len(keys) == 200


@pytest.mark.parametrize("change", [
    "model", "system_head", "system_tail", "system_length", "tool_names", "reminder", "first_message_blocks",
])
def test_what_identifies_a_conversation_changes_the_key(change: str) -> None:
    base = claude_code_turn(2)
    other = copy.deepcopy(base)
    main = other["system"][2]
    if change == "model":
        other["model"] = "claude-haiku-4-5"
    elif change == "system_head":  # inside the hashed head of a long part
        main["text"] = "X" + main["text"][1:]
    elif change == "system_tail":  # e.g. another working directory, at the end of Claude Code's prompt
        main["text"] = main["text"].replace("/home/me/project", "/home/me/other!!")
    elif change == "system_length":  # a long part's skipped middle still counts through its length
        main["text"] = main["text"][:8000] + "x" + main["text"][8000:]
    elif change == "tool_names":
        other["tools"][1]["name"] = "Write"
    elif change == "reminder":
        other["messages"][0]["content"][0]["text"] = "<system-reminder>\nother project\n</system-reminder>\n"
    elif change == "first_message_blocks":
        other["messages"][0]["content"].append({"type": "text", "text": "and one more thing"})
    assert other != base
    assert affinity_key(base) != affinity_key(other)


def test_long_parts_are_hashed_by_their_edges() -> None:
    # The documented trade-off that bounds the cost: a same-length change in the middle of a long part
    # is not seen. It can only put two conversations on one key, never split one conversation.
    base = claude_code_turn(2)
    other = copy.deepcopy(base)
    text = other["system"][2]["text"]
    other["system"][2]["text"] = text[:8000] + "#" + text[8001:]
    assert other != base
    assert affinity_key(base) == affinity_key(other)


def test_billing_header_is_not_part_of_the_key() -> None:
    a = claude_code_turn(2, cch="00000")
    b = claude_code_turn(2, cch="a5145")
    c = claude_code_turn(2)
    del c["system"][0]
    assert affinity_key(a) == affinity_key(b) == affinity_key(c)


# --- affinity_key: is anything marked? ----------------------------------------------------------------

def test_nothing_marked_gives_none() -> None:
    assert affinity_key(unmarked(claude_code_turn(4))) is None
    assert affinity_key({"model": "m", "messages": [{"role": "user", "content": "hi"}]}) is None
    assert affinity_key({}) is None


def test_a_null_cache_control_marks_nothing() -> None:
    payload = unmarked(claude_code_turn(2))
    payload["cache_control"] = None
    payload["messages"][-1]["content"][-1]["cache_control"] = None
    assert affinity_key(payload) is None


def _mark(payload: dict[str, Any], where: str) -> None:
    messages = payload["messages"]
    if where == "top_level":
        payload["cache_control"] = MARK
    elif where == "system_first_block":
        payload["system"][0]["cache_control"] = MARK
    elif where == "system_last_block":
        payload["system"][-1]["cache_control"] = MARK
    elif where == "first_tool":
        payload["tools"][0]["cache_control"] = MARK
    elif where == "last_tool":
        payload["tools"][-1]["cache_control"] = MARK
    elif where == "first_message":
        messages[0]["content"][0]["cache_control"] = MARK
    elif where == "middle_message":
        messages[len(messages) // 2]["content"][-1]["cache_control"] = MARK
    elif where == "last_message":
        messages[-1]["content"][-1]["cache_control"] = MARK
    elif where == "inside_tool_result":
        messages[-1]["content"][-1]["content"] = [{"type": "text", "text": "out", "cache_control": MARK}]
    else:
        raise AssertionError(where)


@pytest.mark.parametrize("where", [
    "top_level", "system_first_block", "system_last_block", "first_tool", "last_tool",
    "first_message", "middle_message", "last_message", "inside_tool_result",
])
def test_cache_control_is_found_wherever_it_is(where: str) -> None:
    payload = unmarked(claude_code_turn(4))
    assert affinity_key(payload) is None
    _mark(payload, where)
    key = affinity_key(payload)
    assert key is not None
    # Where the mark is does not change which conversation this is.
    assert key == affinity_key(claude_code_turn(4))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["cache_control", "content", "text", "role", "type", "name", "x"]), children, max_size=4),
    max_leaves=25,
)
PAYLOADS = st.fixed_dictionaries({}, optional={
    "model": JSON, "system": JSON, "tools": JSON, "messages": JSON, "cache_control": JSON,
})


@settings(max_examples=300, deadline=None)
@given(PAYLOADS)
def test_any_json_body_gives_a_key_or_none_and_never_raises(payload: dict[str, Any]) -> None:
    # It runs on every request before validation has the final say, so odd shapes must not break it.
    key = affinity_key(payload)
    assert key is None or len(key) == DIGEST_SIZE
    assert affinity_key(copy.deepcopy(payload)) == key


# --- rendezvous_order ---------------------------------------------------------------------------------

FOUR = [("key-a", 1.0), ("key-b", 1.0), ("key-c", 1.0), ("key-d", 1.0)]


def keys(n: int) -> list[bytes]:
    return [hashlib.blake2b(i.to_bytes(4, "little"), digest_size=DIGEST_SIZE).digest() for i in range(n)]


def test_order_follows_the_documented_formula() -> None:
    # An independent rendering of the docstring's formula: gateways on other hosts and versions must agree.
    candidates = [("key-a", 1.0), ("key-b", 2.5), ("key-c", 0.5)]
    for key in keys(200):
        scores = []
        for ident, weight in candidates:
            h = int.from_bytes(hashlib.blake2b(key + ident.encode(), digest_size=8).digest(), "little") >> 12
            scores.append(-weight / math.log((2 * h + 1) / 2**53))
        expected = sorted(range(3), key=lambda i: -scores[i])
        assert rendezvous_order(key, candidates) == expected


def test_order_is_deterministic_and_depends_on_the_key() -> None:
    orders = [tuple(rendezvous_order(k, FOUR)) for k in keys(1000)]
    assert orders == [tuple(rendezvous_order(k, FOUR)) for k in keys(1000)]
    firsts = Counter(order[0] for order in orders)
    assert set(firsts) == {0, 1, 2, 3}
    assert len(set(orders)) == 24  # every permutation of four shows up


@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 3.0), (1.0, 2.0, 3.0, 4.0), (0.25, 0.25, 0.5)])
def test_each_candidate_gets_a_share_proportional_to_its_weight(weights: tuple[float, ...]) -> None:
    candidates = [(f"key-{i}", w) for i, w in enumerate(weights)]
    firsts = Counter(rendezvous_order(k, candidates)[0] for k in keys(10_000))
    total = sum(weights)
    for i, weight in enumerate(weights):
        assert abs(firsts[i] / 10_000 - weight / total) < 0.02, (i, firsts)


def test_removing_a_candidate_moves_only_the_keys_that_preferred_it() -> None:
    removed = 2
    rest = [c for i, c in enumerate(FOUR) if i != removed]
    moved = 0
    for key in keys(10_000):
        before = [FOUR[i][0] for i in rendezvous_order(key, FOUR)]
        after = [rest[i][0] for i in rendezvous_order(key, rest)]
        # The other candidates keep their relative order: a key homed elsewhere stays, and a key homed on
        # the removed one goes to its second choice.
        assert after == [ident for ident in before if ident != FOUR[removed][0]]
        moved += before[0] == FOUR[removed][0]
    assert 2300 < moved < 2700


def test_adding_a_candidate_takes_keys_only_for_itself() -> None:
    grown = [*FOUR, ("key-e", 2.0)]
    for key in keys(5000):
        before = FOUR[rendezvous_order(key, FOUR)[0]][0]
        after = grown[rendezvous_order(key, grown)[0]][0]
        assert after in (before, "key-e")


@pytest.mark.parametrize("weight", [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf])
def test_weight_must_be_a_finite_positive_number(weight: float) -> None:
    with pytest.raises(ValueError, match="key-z"):
        rendezvous_order(b"k", [*FOUR, ("key-z", weight)])


def test_no_candidates_no_order() -> None:
    assert rendezvous_order(b"k", []) == []


def test_ties_keep_the_candidates_order() -> None:
    # Same id and weight twice: equal scores, so their indexes stay in order.
    order = rendezvous_order(b"k", [("same", 1.0), ("same", 1.0), ("same", 1.0)])
    assert order == [0, 1, 2]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64),
    st.lists(st.tuples(st.text(max_size=12), st.floats(min_value=1e-9, max_value=1e9)), max_size=12),
)
def test_order_is_a_permutation_of_all_indexes(key: bytes, candidates: list[tuple[str, float]]) -> None:
    order = rendezvous_order(key, candidates)
    assert sorted(order) == list(range(len(candidates)))
    assert rendezvous_order(key, candidates) == order
