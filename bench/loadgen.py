"""Closed-loop load generator: `concurrency` workers share one ClientSession and a bounded request count.

Each request is timed twice: to its first body byte (TTFB: the first SSE event of a stream) and to its last.
`ttfb_rounds` times hops against one base, round by round, to get what each hop adds to the first byte, on
`rawclient.RawClient` rather than aiohttp.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httptools
import orjson
from rawclient import RawClient

MODEL = "claude-sonnet-4-6"
OPENAI_CLIENT_MODEL = "claude-haiku-4-5-20251001"
"""The model name clients send for Tollway's openai route (Tollway maps it to OPENAI_UPSTREAM_MODEL)."""
OPENAI_UPSTREAM_MODEL = "gpt-bench"
MAX_ERROR_SAMPLES = 5

_SYSTEM = "You are a concise assistant for a logistics company. Answer in at most three sentences."
_TURNS = [
    {"role": "user", "content": "Which is cheaper for 40 pallets from Rotterdam to Milan: rail or road?"},
    {
        "role": "assistant",
        "content": "For 40 pallets, rail is usually cheaper per pallet but slower and less flexible.",
    },
    {"role": "user", "content": "And if it has to arrive within 48 hours?"},
]


@dataclass(frozen=True)
class Workload:
    """What a target is sent, per mode, and the bytes that end a complete stream."""

    bodies: dict[str, bytes]
    stream_end: bytes


def anthropic_workload(model: str) -> Workload:
    conversation = {"model": model, "max_tokens": 1024, "system": _SYSTEM, "messages": _TURNS}
    return Workload(
        {"non-stream": orjson.dumps(conversation), "stream": orjson.dumps({**conversation, "stream": True})},
        b"message_stop",
    )


def _openai_direct_workload() -> Workload:
    # What Tollway sends upstream for the Anthropic conversation above (a generic-family openai upstream).
    messages = [{"role": "system", "content": _SYSTEM}, *_TURNS]
    chat: dict[str, Any] = {"model": OPENAI_UPSTREAM_MODEL, "messages": messages, "max_tokens": 1024}
    streaming = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    return Workload({"non-stream": orjson.dumps(chat), "stream": orjson.dumps(streaming)}, b"data: [DONE]")


ANTHROPIC = anthropic_workload(MODEL)
ANTHROPIC_VIA_OPENAI = anthropic_workload(OPENAI_CLIENT_MODEL)
OPENAI_DIRECT = _openai_direct_workload()


def client_headers(api_key: str | None) -> dict[str, str]:
    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    if api_key is not None:
        headers["x-api-key"] = api_key
    return headers


def openai_headers(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}", "content-type": "application/json"}


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    ttfb_ns: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float | None:
        return percentile_ms(self.latencies_ns, q)

    def ttfb_percentile_ms(self, q: float) -> float | None:
        return percentile_ms(self.ttfb_ns, q)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def note_error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)


def percentile_ms(values_ns: list[int], q: float) -> float | None:
    if not values_ns:
        return None
    ordered = sorted(values_ns)
    # Nearest rank: an observed value, never an interpolation between two.
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1] / 1e6


def new_session(max_connections: int) -> aiohttp.ClientSession:
    """max_connections 0: no cap (the streams bench holds thousands open)."""
    # Idle connections are dropped after 2 s (checked every 2 s, so at most 4 s idle): below uvicorn's 5 s
    # keep-alive (LiteLLM), which would otherwise close a pooled connection just as it is reused, and a POST
    # on it fails ("Can not write request body"). Within a cell no connection sits idle that long.
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=2.0)
    # Per-request cap: a hung server costs one timeout per worker, not the whole run.
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


async def run_load(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    workload: Workload,
    stream: bool,
    concurrency: int,
    total: int,
    time_limit: float,
) -> LoadResult:
    """Issue at most `total` requests, none started after `time_limit` seconds."""
    body = workload.bodies["stream" if stream else "non-stream"]
    end = workload.stream_end
    result = LoadResult()
    issued = 0
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter_ns()
            try:
                status, data, first = await _one(session, url, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.note_error(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200:
                result.note_error(f"HTTP {status}: {data[:200]!r}")
            elif stream and end not in data[-200:]:
                result.note_error(f"stream not ending in {end.decode()}: {data[-200:]!r}")
            else:
                result.ok += 1
                result.latencies_ns.append(time.perf_counter_ns() - t0)
                result.ttfb_ns.append(first - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, int]:
    """(status, the whole body, perf_counter_ns when its first byte arrived)."""
    async with session.post(url, data=body, headers=headers) as resp:
        # The whole body, as a real client would, so streams are timed to their last event.
        first = await resp.content.readany()
        first_ns = time.perf_counter_ns()
        rest = await resp.content.read()
        return resp.status, first + rest, first_ns


@dataclass
class Leg:
    """One side of a TTFB comparison."""

    url: str
    headers: dict[str, str]
    workload: Workload


@dataclass
class PairedTtfb:
    """Time to first byte of the same request sent to a base and to a hop in the same round, round by round."""

    base_ns: list[int] = field(default_factory=list)
    hop_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def added_ns(self) -> list[int]:
        return [h - b for b, h in zip(self.base_ns, self.hop_ns, strict=True)]

    def failed(self, url: str, status: int, data: bytes) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{url}: {status} {data[:200]!r}")


def ttfb_rounds(
    client: RawClient, base: Leg, hops: dict[str, tuple[Leg, int]], stream: bool, time_limit: float
) -> dict[str, PairedTtfb]:
    """At concurrency 1, round i sends the same request to ``base`` and to every hop that has rounds left of its
    quota (``hops``: name -> (leg, rounds)), one after the other. The order turns by one each round and runs
    backwards every other turn, so that every hop follows and precedes each other leg as often: all hops share
    each moment's machine load, with the base and with one another, and their tails can be compared within a
    run. A failed hop drops its own pair of the round; a failed base drops the round's.

    Requests go through ``client`` (`RawClient`), blocking: one at a time, timed on the wire."""
    results = {name: PairedTtfb() for name in hops}
    mode = "stream" if stream else "non-stream"
    deadline = time.perf_counter() + time_limit
    # The client's own collections would land in whichever hop's time they fell in.
    gc.disable()
    try:
        for i in range(max((quota for _, quota in hops.values()), default=0)):
            if time.perf_counter() > deadline:
                break
            legs = [(None, base), *((name, leg) for name, (leg, quota) in hops.items() if i < quota)]
            turn = i % len(legs)
            order = legs[turn:] + legs[:turn]
            if (i // len(legs)) % 2:
                order.reverse()
            seen: dict[str | None, int] = {}
            for name, leg in order:
                try:
                    status, data, t0, first = client.post(leg.url, leg.workload.bodies[mode], leg.headers)
                except (OSError, httptools.HttpParserError) as exc:
                    status, data, t0, first = -1, f"{type(exc).__name__}: {exc}".encode(), 0, 0
                if status != 200 or (stream and leg.workload.stream_end not in data[-200:]):
                    for failed in results.values() if name is None else (results[name],):
                        failed.failed(leg.url, status, data)
                    continue
                seen[name] = first - t0
            base_ns = seen.pop(None, None)
            if base_ns is None:
                continue
            for name, ns in seen.items():
                assert name is not None
                results[name].base_ns.append(base_ns)
                results[name].hop_ns.append(ns)
    finally:
        gc.enable()
    return results
