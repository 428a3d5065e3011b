"""Cache affinity against random choice and round-robin, on a simulated Claude Code workload over four keys.

    .venv/bin/python bench/cache_affinity.py [--conversations 400] [--turns 8] [--seed 7] [--timeit]

No servers: every request body is built in memory, each strategy picks one of the keys for it, and a
fake upstream that models Anthropic's prompt cache per key says how many of its input tokens were read
from cache. Prints a markdown table and writes bench/results/cache_affinity.json; the same seed gives
the same numbers. ``--timeit`` also measures the per-request cost of the affinity functions on a Claude
Code-sized body (the figures quoted in src/tollway/routing/affinity.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tollway.routing.affinity import affinity_key, rendezvous_order

RESULTS = Path(__file__).resolve().parent / "results" / "cache_affinity.json"
KEYS = ("key-a", "key-b", "key-c", "key-d")
MODEL = "claude-sonnet-4-6"
CHARS_PER_TOKEN = 4
SYSTEM_TOKENS = 4000
TICK_S = 0.05
"""Simulated clock: one request every 50 ms."""
TTL_S = 300.0
"""Anthropic's default cache lifetime, refreshed by every read."""
LOOKBACK = 20
"""Block boundaries before a breakpoint that Anthropic checks for an earlier cache entry."""
MIN_CACHEABLE = 1024
"""Shortest prefix Anthropic caches for Sonnet; a breakpoint before that writes nothing."""
READ_PRICE = 0.1
WRITE_PRICE = 1.25
"""Cache reads and 5-minute cache writes, as multiples of the base input price."""

Payload = dict[str, Any]
Block = dict[str, Any]


# --- the workload -----------------------------------------------------------------------------------

class Texts:
    """Seeded filler text: slices of one random corpus, so building thousands of bodies stays cheap."""

    def __init__(self, rng: random.Random) -> None:
        vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(2000)]
        self.corpus = " ".join(rng.choices(vocab, k=250_000))
        self.rng = rng

    def tokens(self, n: int, tag: str = "") -> str:
        """About ``n`` tokens (4 characters each); ``tag`` in front makes it unique to its conversation."""
        size = n * CHARS_PER_TOKEN - len(tag)
        start = self.rng.randrange(len(self.corpus) - size)
        return tag + self.corpus[start:start + size]


def _tools(texts: Texts, count: int, description_tokens: int) -> list[Block]:
    return [
        {
            "name": f"Tool{i}",
            "description": texts.tokens(description_tokens),
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {f"arg{j}": {"type": "string", "description": texts.tokens(20)} for j in range(4)},
                "required": ["arg0"],
                "additionalProperties": False,
            },
        }
        for i in range(count)
    ]


def _system(texts: Texts, main_tokens: int) -> list[Block]:
    """Claude Code's shape: attribution block (unmarked, its ``cch`` set per request), identity, prompt."""
    mark = {"type": "ephemeral"}
    return [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.181.7c3; cc_entrypoint=cli; cch=00000;"},
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": mark},
        {"type": "text", "text": texts.tokens(main_tokens), "cache_control": mark},
    ]


@dataclass(slots=True)
class Conversation:
    """One Claude Code session: a first user message, then per turn an assistant tool call and its result."""

    ident: int
    messages: list[Block] = field(default_factory=list)


def _first_message(texts: Texts, conv: int) -> Block:
    return {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\n" + texts.tokens(300) + "\n</system-reminder>\n"},
        {"type": "text", "text": texts.tokens(texts.rng.randint(20, 120), tag=f"[conversation {conv}] ")},
    ]}


def _tool_turn(texts: Texts, conv: int, turn: int) -> list[Block]:
    tool_id = f"toolu_{conv:04d}_{turn:02d}"
    return [
        {"role": "assistant", "content": [
            {"type": "text", "text": texts.tokens(texts.rng.randint(40, 300))},
            {"type": "tool_use", "id": tool_id, "name": "Tool1", "input": {"arg0": f"/src/file_{turn}.py"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": texts.tokens(texts.rng.randint(200, 2000))},
        ]},
    ]


def _with_last_marked(messages: list[Block]) -> list[Block]:
    """The messages with ``cache_control`` on the last block of the last one, as Claude Code sends them.

    Copies that message so the stored history stays unmarked: the next turn moves the breakpoint on.
    """
    last = messages[-1]
    blocks = [dict(b) for b in last["content"]]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return [*messages[:-1], {"role": last["role"], "content": blocks}]


def workload(conversations: int, turns: int, seed: int) -> list[Payload]:
    """Every turn of every conversation, interleaved at random; turns of one conversation stay in order."""
    rng = random.Random(seed)
    texts = Texts(rng)
    tools = _tools(texts, count=6, description_tokens=60)
    system = _system(texts, SYSTEM_TOKENS - 20)
    order = [c for c in range(conversations) for _ in range(turns)]
    rng.shuffle(order)
    convs = [Conversation(c) for c in range(conversations)]
    bodies: list[Payload] = []
    for c in order:
        conv = convs[c]
        if not conv.messages:
            conv.messages.append(_first_message(texts, c))
        else:
            conv.messages.extend(_tool_turn(texts, c, len(conv.messages) // 2 + 1))
        # The attribution block's checksum changes per request in Claude Code; Anthropic ignores it.
        request_system = [{**system[0], "text": system[0]["text"].replace("00000", f"{rng.randrange(16**5):05x}")},
                          *system[1:]]
        bodies.append({"model": MODEL, "max_tokens": 32000, "stream": True, "system": request_system,
                       "tools": tools, "messages": _with_last_marked(conv.messages)})
    return bodies


def claude_code_sized_body(seed: int) -> Payload:
    """An ~80 KB body as Claude Code sends mid-session: 15 KB system prompt, 20 tools, 24 messages."""
    texts = Texts(random.Random(seed))
    messages = [_first_message(texts, 0)]
    for turn in range(1, 12):
        messages.extend(_tool_turn(texts, 0, turn))
    body = {"model": MODEL, "max_tokens": 32000, "stream": True, "system": _system(texts, 3700),
            "tools": _tools(texts, count=20, description_tokens=250), "messages": _with_last_marked(messages)}
    # Trim the history so the whole body is ~80 KB whatever the random lengths were.
    while len(orjson.dumps(body)) > 82_000 and len(messages) > 3:
        del messages[1:3]
        body["messages"] = _with_last_marked(messages)
    return body


# --- the fake upstream ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Prefixes:
    """A request as Anthropic's cache sees it: a digest and a token count per block boundary."""

    digests: list[bytes]
    """``digests[i]`` identifies the prefix ending after block ``i`` (tools, then system, then messages)."""
    tokens: list[int]
    """Tokens in that prefix."""
    breakpoints: list[int]
    """Indexes of the blocks that carry ``cache_control``."""


def prefixes(payload: Payload) -> Prefixes:
    """Cut a body into the cache's blocks and chain-hash them, so equal digests mean equal prefixes."""
    units: list[tuple[bytes, bool]] = []
    for tool in payload.get("tools") or []:
        units.append((orjson.dumps(_unmarked(tool), option=orjson.OPT_SORT_KEYS), "cache_control" in tool))
    for block in payload["system"]:
        if not block["text"].startswith("x-anthropic-billing-header"):  # dropped by Anthropic before caching
            units.append((block["text"].encode(), "cache_control" in block))
    for message in payload["messages"]:
        role = message["role"].encode()
        for block in message["content"]:
            units.append((role + orjson.dumps(_unmarked(block), option=orjson.OPT_SORT_KEYS), "cache_control" in block))
    digests, tokens, breakpoints = [], [], []
    chain, total = b"", 0
    for i, (data, marked) in enumerate(units):
        chain = hashlib.blake2b(chain + data, digest_size=16).digest()
        total += len(data) // CHARS_PER_TOKEN
        digests.append(chain)
        tokens.append(total)
        if marked:
            breakpoints.append(i)
    return Prefixes(digests, tokens, breakpoints)


def _unmarked(block: Block) -> Block:
    return {k: v for k, v in block.items() if k != "cache_control"}


@dataclass(slots=True)
class Usage:
    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    requests: int = 0

    def add(self, other: Usage) -> None:
        self.input += other.input
        self.cache_read += other.cache_read
        self.cache_write += other.cache_write
        self.requests += other.requests


class FakeUpstream:
    """Anthropic's prompt cache, one per key.

    A request reads the longest prefix that this key has cached, looking at each breakpoint and the
    ``LOOKBACK`` block boundaries before it; it then writes a cache entry at each of its breakpoints
    (if the prefix is at least ``MIN_CACHEABLE`` tokens). Entries live ``TTL_S`` on the simulated clock
    and a read refreshes them. Nothing else is modelled: no eviction, no rate limits.
    """

    def __init__(self, keys: int) -> None:
        self.caches: list[dict[bytes, float]] = [{} for _ in range(keys)]

    def serve(self, key: int, request: Prefixes, now: float) -> Usage:
        cache = self.caches[key]
        hit = -1
        for bp in request.breakpoints:
            # Boundaries bp, bp-1, ... down to LOOKBACK blocks back, longest first; ones at or below the
            # best hit so far cannot improve it.
            for i in range(bp, max(bp - LOOKBACK, hit + 1) - 1, -1):
                if cache.get(request.digests[i], -1.0) > now:
                    hit = i
                    break
        read = request.tokens[hit] if hit >= 0 else 0
        if hit >= 0:
            cache[request.digests[hit]] = now + TTL_S
        written = read
        for bp in request.breakpoints:
            if request.tokens[bp] >= MIN_CACHEABLE:
                cache[request.digests[bp]] = now + TTL_S
                written = max(written, request.tokens[bp])
        return Usage(input=request.tokens[-1], cache_read=read, cache_write=written - read, requests=1)


# --- strategies -------------------------------------------------------------------------------------

Strategy = Callable[[int, Payload], int]
"""(request number, body) -> index of the key it goes to."""


def random_choice(seed: int) -> Strategy:
    rng = random.Random(seed)
    return lambda _n, _body: rng.randrange(len(KEYS))


def round_robin() -> Strategy:
    turn: Iterator[int] = itertools.cycle(range(len(KEYS)))
    return lambda _n, _body: next(turn)


def affinity(down: range | None = None, down_key: int = len(KEYS) - 1) -> Strategy:
    """Rendezvous on the affinity key; with ``down``, key ``down_key`` is unhealthy for those requests."""
    fallback = round_robin()
    everyone = [(name, 1.0) for name in KEYS]
    healthy = [(name, 1.0) for i, name in enumerate(KEYS) if i != down_key]

    def pick(n: int, body: Payload) -> int:
        key = affinity_key(body)
        if key is None:  # nothing marked for caching: affinity buys nothing
            return fallback(n, body)
        if down is not None and n in down:
            return KEYS.index(healthy[rendezvous_order(key, healthy)[0]][0])
        return rendezvous_order(key, everyone)[0]

    return pick


def one_key() -> Strategy:
    return lambda _n, _body: 0


def simulate(bodies: list[Payload], requests: list[Prefixes], strategy: Strategy) -> dict[str, Any]:
    upstream = FakeUpstream(len(KEYS))
    per_key = [Usage() for _ in KEYS]
    for n, (body, request) in enumerate(zip(bodies, requests, strict=True)):
        key = strategy(n, body)
        per_key[key].add(upstream.serve(key, request, now=n * TICK_S))
    total = Usage()
    for usage in per_key:
        total.add(usage)
    uncached = total.input - total.cache_read - total.cache_write
    loads = [u.requests for u in per_key]
    return {
        "cache_read_share": round(total.cache_read / total.input, 4),
        "cache_write_share": round(total.cache_write / total.input, 4),
        "input_cost_vs_no_cache": round(
            (uncached + WRITE_PRICE * total.cache_write + READ_PRICE * total.cache_read) / total.input, 4),
        "requests_per_key": loads,
        "request_share_per_key": [round(x / total.requests, 4) for x in loads],
        "input_tokens_per_key": [u.input for u in per_key],
        "load_max_over_min": round(max(loads) / min(loads), 3) if min(loads) else None,
        "input_tokens": total.input,
        "cache_read_tokens": total.cache_read,
        "cache_write_tokens": total.cache_write,
    }


# --- cost per call ----------------------------------------------------------------------------------

def measure_cost(seed: int) -> dict[str, Any]:
    """Microseconds per call of the affinity functions, best of 5 repeats."""
    body = claude_code_sized_body(seed)
    unmarked = orjson.loads(orjson.dumps(body).replace(b'"cache_control"', b'"no_cache_ctrl"'))
    # The slowest path: a long tool-use session that marks nothing, so every block is looked at.
    texts = Texts(random.Random(seed))
    long_session = [_first_message(texts, 0)]
    for turn in range(1, 100):
        long_session.extend(_tool_turn(texts, 0, turn))
    long_unmarked = {**unmarked, "messages": long_session}
    candidates = [(name, 1.0) for name in KEYS]
    key = affinity_key(body)
    assert key is not None and affinity_key(unmarked) is None and affinity_key(long_unmarked) is None

    def per_call(fn: Callable[[], object]) -> float:
        number = 20_000
        return round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 2)

    return {
        "body_bytes": len(orjson.dumps(body)),
        "system_bytes": len(orjson.dumps(body["system"])),
        "tools": len(body["tools"]),
        "tools_bytes": len(orjson.dumps(body["tools"])),
        "messages": len(body["messages"]),
        "affinity_key_us": per_call(lambda: affinity_key(body)),
        "affinity_key_unmarked_us": per_call(lambda: affinity_key(unmarked)),
        "long_session_messages": len(long_session),
        "affinity_key_unmarked_long_session_us": per_call(lambda: affinity_key(long_unmarked)),
        "rendezvous_order_4_us": per_call(lambda: rendezvous_order(key, candidates)),
    }


# --- report -----------------------------------------------------------------------------------------

def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| strategy | cache-read share | cache-write share | input cost vs no cache | requests per key | max/min |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, r in results.items():
        ratio = r["load_max_over_min"]
        lines.append(
            f"| {name} | {r['cache_read_share']:.1%} | {r['cache_write_share']:.1%} | "
            f"{r['input_cost_vs_no_cache']:.3f} | {' / '.join(map(str, r['requests_per_key']))} | "
            f"{'∞' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeit", action="store_true", help="also measure the affinity functions' cost per call")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    bodies = workload(args.conversations, args.turns, args.seed)
    requests = [prefixes(body) for body in bodies]
    n = len(bodies)
    strategies: dict[str, Strategy] = {
        "random": random_choice(args.seed + 1),
        "round-robin": round_robin(),
        "affinity": affinity(),
        "affinity, key-d out for the middle third": affinity(down=range(n // 3, 2 * n // 3)),
        "one key (ceiling, no spread)": one_key(),
    }
    results = {name: simulate(bodies, requests, strategy) for name, strategy in strategies.items()}
    report: dict[str, Any] = {
        "config": {
            "conversations": args.conversations, "turns": args.turns, "requests": n, "keys": len(KEYS),
            "seed": args.seed, "system_tokens": SYSTEM_TOKENS, "chars_per_token": CHARS_PER_TOKEN,
            "tick_s": TICK_S, "ttl_s": TTL_S, "simulated_s": round(n * TICK_S, 1), "lookback_blocks": LOOKBACK,
            "min_cacheable_tokens": MIN_CACHEABLE, "read_price": READ_PRICE, "write_price": WRITE_PRICE,
        },
        "strategies": results,
    }
    total = results["random"]["input_tokens"]
    print(f"{args.conversations} conversations x {args.turns} turns = {n} requests over {len(KEYS)} keys, "
          f"{total:,} input tokens, {n * TICK_S:.0f} s simulated (TTL {TTL_S:.0f} s), seed {args.seed}\n")
    print(markdown(results))
    if args.timeit:
        cost = measure_cost(args.seed)
        report["cost_per_call"] = cost
        print(f"\ncost per call on a {cost['body_bytes']:,}-byte body ({cost['system_bytes']:,} B system, "
              f"{cost['tools']} tools / {cost['tools_bytes']:,} B, {cost['messages']} messages): "
              f"affinity_key {cost['affinity_key_us']} µs, unmarked {cost['affinity_key_unmarked_us']} µs; "
              f"unmarked {cost['long_session_messages']}-message session "
              f"{cost['affinity_key_unmarked_long_session_us']} µs; "
              f"rendezvous_order over 4 {cost['rendezvous_order_4_us']} µs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
