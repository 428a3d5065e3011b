"""What tokens cost: exact decimal arithmetic on the list prices, never floats."""

from __future__ import annotations

import functools
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
    scaled = _scaled_rates(prices)
    if scaled is None:
        exact = (usage.input_tokens * prices.input + usage.output_tokens * prices.output
                 + usage.cache_creation_5m * prices.cache_write_5m + usage.cache_creation_1h * prices.cache_write_1h
                 + usage.cache_read_input_tokens * prices.cache_read) * NANO_PER_TOKEN
        return int(exact.to_integral_value(ROUND_HALF_UP))
    (i, o, w5, w1, r), scale = scaled
    total: int = (usage.input_tokens * i + usage.output_tokens * o + usage.cache_creation_5m * w5
             + usage.cache_creation_1h * w1 + usage.cache_read_input_tokens * r)
    if scale == 1:
        return total
    # Half away from zero, as ROUND_HALF_UP rounds the decimal sum.
    half_up = (2 * abs(total) + scale) // (2 * scale)
    return half_up if total >= 0 else -half_up


@functools.lru_cache(maxsize=256)
def _scaled_rates(prices: Prices) -> tuple[tuple[int, int, int, int, int], int] | None:
    """Each rate in nano-dollars per token times one power of ten that makes them all whole, and that power: the
    request path's cost is then integer arithmetic with the decimal sum's value (a dozen Decimal operations per
    request otherwise). None for a price that is not a finite number."""
    rates = [rate * NANO_PER_TOKEN for rate in (prices.input, prices.output, prices.cache_write_5m,
                                                  prices.cache_write_1h, prices.cache_read)]
    exponents = [rate.as_tuple().exponent for rate in rates]
    if not all(isinstance(e, int) for e in exponents):
        return None
    shift = max(0, *(-e for e in exponents if isinstance(e, int)))
    i, o, w5, w1, r = (int(rate.scaleb(shift)) for rate in rates)
    return (i, o, w5, w1, r), 10 ** shift


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
# An image is resized to at most about 1.15 megapixels and billed at (width x height) / 750 tokens: at most
# about 1,600, however few bytes it has (a one-bit PNG of 1092 x 1092 is 300 bytes of base64).
IMAGE_ALLOWANCE = 1_600


def input_bound(body_size: int, fetches: bool, max_input_tokens: int | None, images: int = 0) -> int:
    """At least as many input tokens as a body of ``body_size`` bytes can be billed for.

    A token of Claude's (byte-level) tokenizer covers at least one byte of text, and an inline image or
    document costs far fewer tokens than its base64 has bytes, so the body's size bounds what it holds.
    What the upstream ``fetches`` is bounded only by the context window.
    """
    tokens = body_size + INPUT_ALLOWANCE + images * IMAGE_ALLOWANCE
    if fetches:
        tokens = max_input_tokens or tokens + FETCHED_ALLOWANCE
    return tokens if max_input_tokens is None else min(tokens, max_input_tokens)


@functools.lru_cache(maxsize=256)
def _reserve_rates(prices: Prices) -> tuple[int, int]:
    """Nano-dollars per token, rounded up (a reserve may only err high): the dearest rate input can be billed
    at (a cache write), and output. Integers, so the request path does no decimal arithmetic."""
    def nano(rate: Decimal) -> int:
        return int((rate * NANO_PER_TOKEN).to_integral_value(ROUND_CEILING))

    # A configured cache-read price may be set above the others; the dearest of all input rates bounds it.
    dearest = max(prices.input, prices.cache_write_5m, prices.cache_write_1h, prices.cache_read)
    return nano(dearest), nano(prices.output)


def reserve_nanousd(prices: Prices, body_size: int, fetches: bool, max_tokens: int,
                    max_input_tokens: int | None, images: int = 0) -> int:
    """The most a request can cost: its input bound at the dearest rate input may be billed at, plus
    ``max_tokens`` of output. Every input token is taken as a cache write: finding out which are would mean
    reading the whole body (Claude Code's are hundreds of kilobytes), and its requests mark them anyway."""
    input_rate, output_rate = _reserve_rates(prices)
    return input_bound(body_size, fetches, max_input_tokens, images) * input_rate + max_tokens * output_rate
