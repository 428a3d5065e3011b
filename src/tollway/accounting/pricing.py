"""What tokens cost: exact decimal arithmetic on the list prices, never floats."""

from __future__ import annotations

from decimal import Decimal

from tollway.protocol.catalog import LIST_PRICES
from tollway.store import UsageSummary

MILLION = Decimal(1_000_000)


def cost_usd(model: str | None, s: UsageSummary) -> Decimal | None:
    """The list-price cost of the tokens in ``s``; None for a model with no known price."""
    prices = LIST_PRICES.get(model or "")
    if prices is None:
        return None
    total = (s.input_tokens * prices.input + s.output_tokens * prices.output
             + s.cache_creation_5m * prices.cache_write_5m + s.cache_creation_1h * prices.cache_write_1h
             + s.cache_read_input_tokens * prices.cache_read)
    return total / MILLION
