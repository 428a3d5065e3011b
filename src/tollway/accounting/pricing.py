"""What tokens cost: exact decimal arithmetic on the list prices, never floats."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

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
