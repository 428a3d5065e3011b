"""What tokens cost: exact decimal arithmetic on the list prices, never floats."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from tollway.protocol.catalog import LIST_PRICES, Prices
from tollway.protocol.usage import Usage
from tollway.store import UsageSummary

MILLION = Decimal(1_000_000)
# A price in dollars per million tokens is this many nano-dollars per token: every list price (to a
# thousandth of a dollar) then costs a whole number of nano-dollars a token, so sums stay exact integers.
NANO_PER_TOKEN = Decimal(1000)


def cost_nanousd(prices: Prices, usage: Usage) -> int:
    """What one request cost, in nano-dollars (1e-9 USD); exact for prices given to 1/1000 of a dollar."""
    total = (usage.input_tokens * prices.input + usage.output_tokens * prices.output
             + usage.cache_creation_5m * prices.cache_write_5m + usage.cache_creation_1h * prices.cache_write_1h
             + usage.cache_read_input_tokens * prices.cache_read) * NANO_PER_TOKEN
    return int(total.to_integral_value(ROUND_HALF_UP))


def cost_usd(model: str | None, s: UsageSummary) -> Decimal | None:
    """The list-price cost of the tokens in ``s``; None for a model with no known price."""
    prices = LIST_PRICES.get(model or "")
    if prices is None:
        return None
    total = (s.input_tokens * prices.input + s.output_tokens * prices.output
             + s.cache_creation_5m * prices.cache_write_5m + s.cache_creation_1h * prices.cache_write_1h
             + s.cache_read_input_tokens * prices.cache_read)
    return total / MILLION


# Tokens Anthropic adds on its side of a request: the tool-use system prompt (a few hundred) and each
# message's framing. Generous on purpose: a reserve must never fall short.
INPUT_ALLOWANCE = 4096
# Content the upstream fetches or runs itself (URL and Files API sources, server tools) can bring in any
# number of tokens; only the model's context window bounds it. For a model with no known window:
FETCHED_ALLOWANCE = 200_000
_FETCHED = (b'"url"', b'"file_id"', b'"web_search', b'"web_fetch', b'"code_execution', b'"mcp_servers"')


def input_bound(body: bytes, max_input_tokens: int | None) -> int:
    """At least as many input tokens as ``body`` can be billed for.

    A token of Claude's (byte-level) tokenizer covers at least one byte of text, and an inline image or
    document costs far fewer tokens than its base64 has bytes, so the body's size bounds what it holds.
    """
    tokens = len(body) + INPUT_ALLOWANCE
    if any(marker in body for marker in _FETCHED):
        tokens = max_input_tokens or tokens + FETCHED_ALLOWANCE
    return tokens if max_input_tokens is None else min(tokens, max_input_tokens)


def reserve_nanousd(prices: Prices, body: bytes, max_tokens: int, max_input_tokens: int | None) -> int:
    """The most a request can cost: its input bound at the dearest rate its input may be billed at (a cache
    write when it marks a prefix for caching), plus ``max_tokens`` of output. Rounded up."""
    rate = prices.input
    if b'"cache_control"' in body:
        rate = max(rate, prices.cache_write_5m, prices.cache_write_1h)
    total = (input_bound(body, max_input_tokens) * rate + max_tokens * prices.output) * NANO_PER_TOKEN
    return int(total.to_integral_value(ROUND_CEILING))
