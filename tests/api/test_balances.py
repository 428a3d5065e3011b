"""Balances and spending caps through the real server, with the official SDK as the client."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import pytest

from tests.conftest import Gateway, Upstream
from tollway.accounting.pricing import reserve_nanousd
from tollway.protocol.catalog import LIST_PRICES
from tollway.store import Budget

MODEL = "claude-sonnet-4-6"
PREPAID = Budget(prepaid=True)


def reserve_of(gateway: Gateway, content: str, max_tokens: int) -> int:
    """What Tollway reserves for this request, from the bytes the SDK will send."""
    body = httpx.Request("POST", "http://x", json={
        "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}], "model": MODEL}).content
    route = gateway.services.table.routes[MODEL]
    return reserve_nanousd(LIST_PRICES[MODEL], len(body), False, max_tokens, route.max_input_tokens)


def ask(client: anthropic.Anthropic, content: str = "hi") -> anthropic.types.Message:
    return client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": content}])


def test_a_key_at_zero_balance_gets_402_before_any_upstream_call(gateway: Gateway, upstream: Upstream) -> None:
    secret = gateway.create_key("broke", budget=PREPAID)
    gateway.server.thread.run(gateway.services.funds.refresh())
    before = len(upstream.fake.received)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(gateway.client(secret), "zero-balance-marker")
    error = caught.value
    assert error.status_code == 402
    body = error.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert "credit balance is too low" in body["error"]["message"] and "$0.000000 left" in body["error"]["message"]
    assert error.response.headers["request-id"].startswith("req_")
    assert len(upstream.fake.received) == before  # refused before the upstream was called
    row = gateway.row(error.response.headers["request-id"])
    assert (row.status, row.error_type, row.upstream) == (402, "billing_error", None)


def test_a_topped_up_key_is_charged_exactly_what_its_answer_cost(gateway: Gateway) -> None:
    secret = gateway.create_key("paying", budget=PREPAID)
    key_id = gateway.key_id("paying")
    gateway.topup(key_id, 1_000_000_000)
    raw = gateway.client(secret).messages.with_raw_response.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    request_id = raw.headers["request-id"]
    cost = gateway.row(request_id).cost_nanousd
    assert cost == 559_200  # the fake's usage at Sonnet 4.6's list prices (see test_pricing)
    live, stored = gateway.balance(key_id)
    assert live == stored == 1_000_000_000 - cost
    entries = gateway.server.thread.run(gateway.services.store.ledger_entries(owner=key_id))
    reserve = reserve_of(gateway, "hi", 16)
    assert [(e.kind, e.amount_nanousd) for _, e in entries] == [
        ("topup", 1_000_000_000), ("reserve", -reserve), ("settle", reserve - cost)]


def test_hundreds_of_concurrent_requests_never_overdraw_a_small_balance(gateway: Gateway, upstream: Upstream) -> None:
    secret = gateway.create_key("crowd", budget=PREPAID)
    key_id = gateway.key_id("crowd")
    reserve = reserve_of(gateway, "crowd", 16)
    start = 3 * reserve + 1000  # room for three requests in flight at once, never a fourth
    gateway.topup(key_id, start)
    upstream.fake.peak = 0

    async def burst() -> list[int | str]:
        client = anthropic.AsyncAnthropic(api_key=secret, base_url=gateway.url, max_retries=0,
                                          default_headers={"x-fake-scenario": "stall:0.5"})
        async def one() -> int | str:
            try:
                await client.messages.create(model=MODEL, max_tokens=16,
                                             messages=[{"role": "user", "content": "crowd"}])
                return 200
            except anthropic.APIStatusError as exc:
                return exc.status_code if exc.body is None else exc.response.json()["error"]["type"]
        async with client:
            return await asyncio.gather(*(one() for _ in range(300)))

    results = asyncio.run(burst())
    served = results.count(200)
    assert set(results) <= {200, "billing_error"}
    assert served >= 3
    assert upstream.fake.peak <= 3  # never more requests in flight than the balance could cover
    rows = [r for r in gateway.usage() if r.key_id == key_id]
    assert len(rows) == 300 and sum(r.status == 200 for r in rows) == served
    spent = sum(r.cost_nanousd or 0 for r in rows)
    live, stored = gateway.balance(key_id)
    assert live == stored == start - spent >= 0
    assert gateway.services.funds.wallet.purses[key_id].held == 0


def test_an_account_balance_is_shared_by_its_keys_and_both_limits_must_hold(gateway: Gateway) -> None:
    reserve = reserve_of(gateway, "hi", 16)
    account = gateway.create_account("team-shared", PREPAID)
    first = gateway.create_key("team-a", account=account)
    second = gateway.create_key("team-b", account=account, budget=PREPAID)  # and a balance of its own
    gateway.topup(account, reserve + 500_000)
    gateway.topup(gateway.key_id("team-b"), 10 * reserve)
    ask(gateway.client(first))  # costs 559,200: the account now holds less than one reserve
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(gateway.client(second))
    assert caught.value.status_code == 402
    assert "the account 'team-shared'" in caught.value.response.json()["error"]["message"]
    gateway.topup(account, reserve)
    ask(gateway.client(second))
    live, stored = gateway.balance(account)
    assert live == stored == 2 * reserve + 500_000 - 2 * 559_200


def test_a_spent_daily_cap_answers_400_with_the_day_access_returns(gateway: Gateway) -> None:
    reserve = reserve_of(gateway, "hi", 16)
    secret = gateway.create_key("capped", budget=Budget(cap_nanousd=reserve + 100_000, cap_period="day"))
    gateway.server.thread.run(gateway.services.funds.refresh())
    ask(gateway.client(secret))
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(gateway.client(secret))
    message = caught.value.response.json()["error"]["message"]
    assert message.startswith("You have reached your specified API usage limits")
    assert "at 00:00 UTC" in message


def test_a_stream_the_client_leaves_is_settled_on_what_was_sent(gateway: Gateway) -> None:
    secret = gateway.create_key("leaver", budget=PREPAID)
    key_id = gateway.key_id("leaver")
    gateway.topup(key_id, 1_000_000_000)
    client = gateway.client(secret, default_headers={"x-fake-scenario": "slow:150"})
    with client.messages.stream(model=MODEL, max_tokens=16, messages=[
            {"role": "user", "content": "a long enough question to stream for a while"}]) as stream:
        request_id = stream.response.headers["request-id"]
        seen = 0
        for event in stream:
            seen += event.type == "content_block_delta"
            if seen == 2:
                break  # the client hangs up mid-answer
    for _ in range(100):
        rows = [r for r in gateway.usage() if r.request_id == request_id]
        if rows:
            break
        asyncio.run(asyncio.sleep(0.05))
    row = rows[0]
    assert row.status == 499
    assert row.output_tokens >= 2  # what went out, estimated, not message_start's placeholder 1
    assert row.cost_nanousd is not None and row.cost_nanousd > 0
    live, stored = gateway.balance(key_id)
    assert live == stored == 1_000_000_000 - row.cost_nanousd
    kinds = [e.kind for _, e in gateway.server.thread.run(gateway.services.store.ledger_entries(owner=key_id))]
    assert kinds == ["topup", "reserve", "settle"]
