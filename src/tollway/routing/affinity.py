"""Cache affinity: the turns of one conversation go to the same upstream key.

Anthropic's prompt cache is per account: a request reads a prefix from cache only if that same key
saw it (up to a ``cache_control`` breakpoint) in the last 5 minutes. Claude Code puts a breakpoint on
the latest message of every turn, so each turn extends the prefix the previous turn cached. Sending
every turn of a conversation to the key that holds its history keeps those reads hitting; different
conversations still spread over the keys, which only costs caching the shared system prompt once per
key.

Two pieces, both pure and without state, so nothing grows with the number of conversations:

* :func:`affinity_key` — a 16-byte blake2b digest of what identifies a conversation and stays the same
  across its turns: the model, the system prompt, the tools and the first user message. ``None`` when
  the request marks nothing for caching (then affinity buys nothing and the caller balances freely).
* :func:`rendezvous_order` — weighted rendezvous (highest-random-weight) hashing of that digest over
  the healthy candidates. The first index is the key's home; when it is unhealthy the caller drops it
  and the same call over the rest gives the next one, and only conversations homed on it move.

What goes into the digest, and what is left out on purpose:

* Each part is orjson-encoded (``OPT_SORT_KEYS`` where it holds objects, so key order does not matter)
  and fed to the hash as its length plus, when it is longer than 4 KiB, only its first and last 2 KiB.
  blake2b runs at about 1 GB/s here (~1 µs per KB), and system prompts with a CLAUDE.md or first
  messages with a pasted file run to tens of KB and more; the cap bounds the hash at 16 KB (four
  parts) whatever the body. The trade-off: two
  conversations that differ only in the middle of a long part, with the same length, share a digest and
  so a key. That only costs spread, never a cache hit, and the parts that tell conversations apart sit
  at the edges: the user's prompt is the last block of the first message, Claude Code's environment
  block (working directory, date, git status) the end of the system prompt.
* ``cache_control`` is stripped from what is hashed: Claude Code marks the latest message, so the
  first user message carries a breakpoint in turn 1 and none from turn 2 on. A string ``system`` or
  ``content`` hashes like the one text block it stands for, as some clients switch between the forms.
* Claude Code's attribution block (a system text block starting ``x-anthropic-billing-header:``) is
  skipped: its ``cch=`` field can change between requests of one conversation, and api.anthropic.com
  does not treat it as prompt text, so it says nothing about the conversation.
* Tools count by name only. Their schemas are 40 KB and more (MCP servers add to them) and nearly
  always the client's fixed set, so they tell conversations apart no better than their names do, and
  orjson with sorted keys takes ~9 µs per 40 KB of them. A tool whose description changes under the
  same name keeps the digest, which is harmless: tools come first in the cached prefix, so any change
  to them is a cache miss on every key alike.

Cost per call (Python 3.11.7, orjson 3.13, one core of an x86-64 Xeon; best of 5 x 20,000 calls with
``bench/cache_affinity.py --timeit``), on a Claude Code-sized body of 78 KB (15 KB system prompt in
three blocks, 20 tools in 33 KB, 11 messages, breakpoints on the system prompt and the last message):

* ``affinity_key``: 11.4 µs. Most of it is blake2b over the ~5.5 KB actually hashed (the capped system
  prompt and the 1.5 KB first message); encoding the system texts, tool names and first message is
  ~1 µs each. Hashing the parts whole (tools included) would cost ~60 µs on this body and grow with it.
* ``affinity_key`` on the same body with no ``cache_control`` (every block looked at, ``None``): 3.3 µs;
  on a 199-message tool-use session with none, the slowest path, 30 µs (~0.07 µs a block; a request
  with a breakpoint on its system prompt or latest message stops looking at once).
* ``rendezvous_order`` over four candidates: 3.0 µs.

Encoding the first user message is linear in its size at orjson speed (~50 µs per MB, say a pasted
image); hashing stays bounded.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import orjson

from tollway.protocol.catalog import BILLING_HEADER

__all__ = ["DIGEST_SIZE", "affinity_key", "rendezvous_order"]

DIGEST_SIZE = 16
"""Bytes in an affinity key: 128 bits, so distinct conversations practically never collide."""

_HEAD = 2048
_TAIL = 2048
"""How much of a part longer than ``_HEAD + _TAIL`` bytes is hashed: its edges (see the module doc)."""

_CACHE_CONTROL = "cache_control"
_U_SCALE = 2.0**-53


def affinity_key(payload: dict[str, Any]) -> bytes | None:
    """A digest identifying the conversation, or None when the request marks nothing for caching
    (no cache_control anywhere: top-level, system blocks, tools, message blocks).

    ``payload`` is the request body as parsed from JSON. Turns of one conversation share the digest:
    it covers the model, the system prompt (without Claude Code's billing-header block), the tool names
    and the first user message, all without their ``cache_control`` markers.
    """
    if not _marks_cache(payload):
        return None
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    _feed(digest, orjson.dumps(payload.get("model")))
    _feed(digest, orjson.dumps(_system_texts(payload.get("system"))))
    _feed(digest, orjson.dumps(_tool_names(payload.get("tools"))))
    _feed(digest, orjson.dumps(_first_user_content(payload.get("messages")), option=orjson.OPT_SORT_KEYS))
    return digest.digest()


def rendezvous_order(key: bytes, candidates: Sequence[tuple[str, float]]) -> list[int]:
    """Indexes of candidates (id, weight > 0) from most to least preferred for this key: weighted
    rendezvous (highest-random-weight) hashing, so the preferred candidate is stable for a key, each
    candidate gets a share of keys proportional to its weight, and when a candidate drops out only the
    keys that preferred it move.

    Each candidate scores ``-weight / ln(u)``, where ``u`` in (0, 1) comes from
    ``blake2b(key + id, digest_size=8)``: the top 52 bits ``h`` of the little-endian integer give
    ``u = (2h + 1) / 2**53``, so ``u`` is never 0 or 1 and ``ln(u)`` is finite and negative. As ``u``
    is uniform, ``-ln(u)`` is exponential with rate 1, and ``-ln(u) / weight`` exponential with rate
    ``weight``; the highest score is the smallest of those independent exponentials, which belongs to
    candidate ``i`` with probability ``weight_i / sum(weights)``. A candidate's score depends only on
    the key and its own id and weight, so removing one leaves every other score, and so every other
    key's first choice, as it was. Equal scores (astronomically unlikely) keep the candidates' order.

    Raises ValueError for a weight that is not a finite number above 0: a candidate that should get
    nothing is left out of ``candidates`` rather than given weight 0.
    """
    # The key is absorbed once; each candidate continues from a copy of that state, which gives the
    # same digest as hashing key + id and saves re-hashing the key and concatenating per candidate.
    keyed = hashlib.blake2b(key, digest_size=8)
    log = math.log
    isfinite = math.isfinite
    scores: list[float] = []
    for ident, weight in candidates:
        # `not weight > 0` also rejects NaN, which compares false with everything.
        if not (weight > 0 and isfinite(weight)):
            raise ValueError(f"candidate {ident!r}: weight must be a finite number > 0, got {weight!r}")
        state = keyed.copy()
        state.update(ident.encode())
        h = int.from_bytes(state.digest(), "little") >> 12
        scores.append(-weight / log((2 * h + 1) * _U_SCALE))
    # sorted() is stable with reverse=True too, so ties keep the candidates' order: deterministic.
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)


def _feed(digest: hashlib.blake2b, part: bytes) -> None:
    """Add one encoded part: its length (which also keeps the parts apart), then all of it or its edges."""
    size = len(part)
    digest.update(size.to_bytes(8, "little"))
    if size <= _HEAD + _TAIL:
        digest.update(part)
    else:
        # memoryview slices hash the edges in place instead of copying them.
        view = memoryview(part)
        digest.update(view[:_HEAD])
        digest.update(view[size - _TAIL:])


def _marks_cache(payload: dict[str, Any]) -> bool:
    """Whether any ``cache_control`` is set, looking first where clients put them so it ends early."""
    if payload.get(_CACHE_CONTROL):
        return True
    system = payload.get("system")
    if isinstance(system, list) and _any_marked(system):
        return True
    messages = payload.get("messages")
    if isinstance(messages, list):
        # From the end: Claude Code and the SDK helpers mark the latest messages. Without any mark this
        # walks every block, so the loops are inlined rather than a call per message or block:
        # ~0.07 µs a block, ~30 µs for a 200-message tool-use session.
        for message in reversed(messages):
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get(_CACHE_CONTROL):
                    return True
                # A tool_result's (or search_result's) own content blocks can carry breakpoints too.
                if "content" in block:
                    inner = block["content"]
                    if isinstance(inner, list) and _any_marked(inner):
                        return True
    tools = payload.get("tools")
    return isinstance(tools, list) and _any_marked(tools)


def _any_marked(blocks: list[Any]) -> bool:
    return any(isinstance(block, dict) and block.get(_CACHE_CONTROL) for block in blocks)


def _system_texts(system: object) -> list[Any]:
    if isinstance(system, str):
        return [system]
    if not isinstance(system, list):
        return []
    texts: list[Any] = []
    for block in system:
        if isinstance(block, dict):
            text = block.get("text")
            if not (isinstance(text, str) and text.startswith(BILLING_HEADER)):
                texts.append(text)
    return texts


def _tool_names(tools: object) -> list[Any]:
    if not isinstance(tools, list):
        return []
    return [tool.get("name") for tool in tools if isinstance(tool, dict)]


def _first_user_content(messages: object) -> list[Any] | None:
    """The first user message's content as blocks, without their ``cache_control``."""
    if not isinstance(messages, list):
        return None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return [{"type": "text", "text": content}]
            if not isinstance(content, list):
                return None
            return [
                {k: v for k, v in block.items() if k != _CACHE_CONTROL}
                if isinstance(block, dict) and _CACHE_CONTROL in block else block
                for block in content
            ]
    return None
