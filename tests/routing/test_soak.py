"""A soak: 10,000 requests over three upstreams, one of them failing at random.

Every request must end in a whole answer or exactly one clean Anthropic error, never two answers in one
stream, and the usage table must hold exactly one row for each request-id the clients saw.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import Gateway
from tests.routing.conftest import Fake
from tollway.config import parse_config

REQUESTS = 10_000
CONCURRENCY = 32


@pytest.fixture
def soak_gateway(fakes: dict[str, Fake], tmp_path: Path) -> Iterator[Gateway]:
    raw = {
        "storage": {"url": f"sqlite:///{tmp_path / 'soak.db'}", "flush_interval": 0.2},
        "upstreams": [{"name": n, "kind": "anthropic", "base_url": f.url, "api_keys": [f"key-{n}"]}
                      for n, f in fakes.items()],
        "models": [{"name": "claude-sonnet-4-6", "targets": [{"upstream": n} for n in fakes]}],
    }
    gw = Gateway(parse_config(raw, "soak", {}))
    yield gw
    gw.server.close()


def check_answer(status: int, body: bytes, stream: bool) -> str:
    """'ok' or the error type; raises AssertionError on anything malformed."""
    if not stream or status != 200:
        payload = orjson.loads(body)
        if status == 200:
            assert payload["type"] == "message" and payload["content"], payload
            return "ok"
        assert payload["type"] == "error" and payload["error"]["type"], payload
        return str(payload["error"]["type"])
    events = [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]
    assert events.count("message_start") == 1, events
    if events[-1] == "message_stop":
        assert "error" not in events
        return "ok"
    assert events[-1] == "error" and events.count("error") == 1, events
    return "stream_error"


async def _fire(gw: Gateway, secret: str) -> tuple[Counter[str], list[str]]:
    outcomes: Counter[str] = Counter()
    request_ids: list[str] = []
    issued = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < REQUESTS:
            issued += 1
            stream = issued % 2 == 0
            body = {"model": "claude-sonnet-4-6", "max_tokens": 20, "stream": stream,
                    "messages": [{"role": "user", "content": f"soak {issued}"}]}
            async with session.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": secret}) as resp:
                data = await resp.read()
                request_ids.append(resp.headers["request-id"])
                outcomes[check_answer(resp.status, data, stream)] += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return outcomes, request_ids


@pytest.mark.slow
@pytest.mark.usefixtures("reset")
def test_soak_with_one_upstream_failing_at_random(soak_gateway: Gateway, fakes: dict[str, Fake]) -> None:
    fakes["b"].fake.fail_rate = 0.3
    fakes["b"].fake.retry_after = "0.05"  # short rests, so b keeps getting traffic and keeps failing
    secret = soak_gateway.create_key("soak")
    served_before = {n: f.count for n, f in fakes.items()}
    outcomes, request_ids = asyncio.run(_fire(soak_gateway, secret))

    assert sum(outcomes.values()) == REQUESTS
    # Two healthy upstreams remain, so failover turns every failure of b into a success.
    assert outcomes == Counter({"ok": REQUESTS}), outcomes
    assert len(set(request_ids)) == REQUESTS
    served = {n: f.count - served_before[n] for n, f in fakes.items()}
    assert served["b"] > 100, served  # b was really in the rotation, and really failed
    rows = soak_gateway.usage()
    assert sorted(r.request_id for r in rows) == sorted(request_ids)
    failed_over = [r for r in rows if r.tries is not None]
    assert failed_over and all(r.status == 200 for r in failed_over)
    assert all('"upstream":"b"' in (r.tries or "") for r in failed_over)
