"""cost_usd against list prices worked out by hand (reference section 9)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from tollway.accounting.pricing import (
    FETCHED_ALLOWANCE,
    IMAGE_ALLOWANCE,
    INPUT_ALLOWANCE,
    cost_nanousd,
    cost_usd,
    input_bound,
    reserve_nanousd,
)
from tollway.protocol.catalog import LIST_PRICES, SEED_MODELS, Prices
from tollway.protocol.usage import Usage
from tollway.store import UsageSummary

FIXTURES = Path(__file__).parents[1] / "fixtures" / "anthropic"


def summary(inp: int = 0, out: int = 0, c5m: int = 0, c1h: int = 0, read: int = 0) -> UsageSummary:
    return UsageSummary(key_id="key_a", key_name="a", model="m", requests=1, errors=0, input_tokens=inp,
                        output_tokens=out, cache_creation_5m=c5m, cache_creation_1h=c1h, cache_read_input_tokens=read)


# Dollars per million tokens from the reference's table: input, output, 5m write, 1h write, cache read.
TABLE = {
    "claude-opus-4-6": ("5", "25", "6.25", "10", "0.50"),
    "claude-sonnet-4-6": ("3", "15", "3.75", "6", "0.30"),
    "claude-opus-4-5-20251101": ("5", "25", "6.25", "10", "0.50"),
    "claude-sonnet-4-5-20250929": ("3", "15", "3.75", "6", "0.30"),
    "claude-haiku-4-5-20251001": ("1", "5", "1.25", "2", "0.10"),
    "claude-opus-4-1-20250805": ("15", "75", "18.75", "30", "1.50"),
    "claude-opus-4-20250514": ("15", "75", "18.75", "30", "1.50"),
    "claude-sonnet-4-20250514": ("3", "15", "3.75", "6", "0.30"),
    "claude-3-7-sonnet-20250219": ("3", "15", "3.75", "6", "0.30"),
    "claude-3-5-sonnet-20241022": ("3", "15", "3.75", "6", "0.30"),
}

# 1M input + 2M output + 3M 5m-writes + 4M 1h-writes + 5M reads, by hand:
#   $5/$25:   5 +  50 + 18.75 +  40 + 2.5 = 116.25
#   $3/$15:   3 +  30 + 11.25 +  24 + 1.5 =  69.75
#   $1/$5:    1 +  10 +  3.75 +   8 + 0.5 =  23.25
#   $15/$75: 15 + 150 + 56.25 + 120 + 7.5 = 348.75
MIXED = {
    "claude-opus-4-6": "116.25",
    "claude-sonnet-4-6": "69.75",
    "claude-opus-4-5-20251101": "116.25",
    "claude-sonnet-4-5-20250929": "69.75",
    "claude-haiku-4-5-20251001": "23.25",
    "claude-opus-4-1-20250805": "348.75",
    "claude-opus-4-20250514": "348.75",
    "claude-sonnet-4-20250514": "69.75",
    "claude-3-7-sonnet-20250219": "69.75",
    "claude-3-5-sonnet-20241022": "69.75",
}

# A realistic small request: 1,234 input, 567 output, 2,000 5m-writes, 0 1h, 10,000 reads.
#   sonnet: (1234*3 + 567*15 + 2000*3.75 + 10000*0.3) / 1e6 = (3702 + 8505 + 7500 + 3000) / 1e6 = 0.022707
#   haiku:  (1234*1 + 567*5 + 2000*1.25 + 10000*0.1) / 1e6  = (1234 + 2835 + 2500 + 1000) / 1e6  = 0.007569
#   opus 4.6: (1234*5 + 567*25 + 2000*6.25 + 10000*0.5) / 1e6 = (6170 + 14175 + 12500 + 5000) / 1e6 = 0.037845
#   opus 4.1: (1234*15 + 567*75 + 2000*18.75 + 10000*1.5) / 1e6 = (18510 + 42525 + 37500 + 15000) / 1e6 = 0.113535
SMALL = {
    "claude-opus-4-6": "0.037845",
    "claude-sonnet-4-6": "0.022707",
    "claude-opus-4-5-20251101": "0.037845",
    "claude-sonnet-4-5-20250929": "0.022707",
    "claude-haiku-4-5-20251001": "0.007569",
    "claude-opus-4-1-20250805": "0.113535",
    "claude-opus-4-20250514": "0.113535",
    "claude-sonnet-4-20250514": "0.022707",
    "claude-3-7-sonnet-20250219": "0.022707",
    "claude-3-5-sonnet-20241022": "0.022707",
}


def test_every_seed_model_is_priced() -> None:
    assert {m.id for m in SEED_MODELS} == set(TABLE) == set(LIST_PRICES)


@pytest.mark.parametrize("model", sorted(TABLE))
def test_each_price_component(model: str) -> None:
    inp, out, w5m, w1h, read = (Decimal(x) for x in TABLE[model])
    million = 1_000_000
    assert cost_usd(model, summary(inp=million)) == inp
    assert cost_usd(model, summary(out=million)) == out
    assert cost_usd(model, summary(c5m=million)) == w5m
    assert cost_usd(model, summary(c1h=million)) == w1h
    assert cost_usd(model, summary(read=million)) == read
    assert cost_usd(model, summary()) == 0


@pytest.mark.parametrize("model", sorted(MIXED))
def test_mixed_usage(model: str) -> None:
    cost = cost_usd(model, summary(inp=1_000_000, out=2_000_000, c5m=3_000_000, c1h=4_000_000, read=5_000_000))
    assert cost == Decimal(MIXED[model])


@pytest.mark.parametrize("model", sorted(SMALL))
def test_small_request_is_exact(model: str) -> None:
    cost = cost_usd(model, summary(inp=1234, out=567, c5m=2000, read=10_000))
    assert isinstance(cost, Decimal)
    assert cost == Decimal(SMALL[model])
    assert f"{cost:.6f}" == SMALL[model]


def test_single_tokens_are_exact_not_float() -> None:
    # One haiku cache read is $0.0000001: a float sum of many would drift, Decimal must not.
    one_read = cost_usd("claude-haiku-4-5-20251001", summary(read=1))
    assert one_read == Decimal("0.0000001")
    assert one_read is not None and sum([one_read] * 10, Decimal(0)) == Decimal("0.000001")
    assert cost_usd("claude-sonnet-4-6", summary(inp=1, out=1)) == Decimal("0.000018")


@pytest.mark.parametrize("model", [None, "", "claude-unknown-9", "mock-model", "claude-sonnet-4-6 "])
def test_unknown_model_has_no_price(model: str | None) -> None:
    assert cost_usd(model, summary(inp=1000, out=1000)) is None


@pytest.mark.parametrize("model", sorted(SMALL))
def test_per_request_cost_in_nano_dollars_is_exact(model: str) -> None:
    usage = Usage(input_tokens=1234, output_tokens=567, cache_creation_5m=2000, cache_read_input_tokens=10_000)
    nano = cost_nanousd(LIST_PRICES[model], usage)
    assert isinstance(nano, int)
    assert Decimal(nano) / Decimal(10**9) == Decimal(SMALL[model])


def test_one_cache_read_costs_a_whole_number_of_nano_dollars() -> None:
    assert cost_nanousd(LIST_PRICES["claude-haiku-4-5-20251001"], Usage(cache_read_input_tokens=1)) == 100
    assert cost_nanousd(LIST_PRICES["claude-opus-4-1-20250805"], Usage(cache_creation_5m=1)) == 18_750


@pytest.mark.parametrize(("tokens", "nano"), [(1, 1), (2, 3), (3, 4), (4, 5), (6, 8)])
def test_a_fraction_of_a_nano_dollar_rounds_half_up(tokens: int, nano: int) -> None:
    # $0.001 per million input tokens: a 5-minute cache write is 1.25 nano-dollars a token, so the sum has
    # quarters that round half up (2.5 -> 3, 7.5 -> 8), as the decimal sum did.
    assert cost_nanousd(Prices.list("0.001", "0.003"), Usage(cache_creation_5m=tokens)) == nano


def test_rates_with_different_decimal_places_add_up_exactly() -> None:
    prices = Prices(Decimal("1.2345"), Decimal("0.00001"), Decimal("3"), Decimal("0.0000005"), Decimal("2E+1"))
    usage = Usage(input_tokens=7, output_tokens=123_457, cache_creation_5m=11, cache_creation_1h=999_999,
                  cache_read_input_tokens=3)
    exact = (7 * Decimal("1234.5") + 123_457 * Decimal("0.01") + 11 * Decimal("3000") + 999_999 * Decimal("0.0005")
             + 3 * Decimal("20000"))
    assert cost_nanousd(prices, usage) == int(exact.to_integral_value("ROUND_HALF_UP"))


# -- the reserve: the most a request can cost --------------------------------------------------------------

SONNET = LIST_PRICES["claude-sonnet-4-6"]


def test_reserve_is_the_body_bound_at_the_dearest_input_rate_plus_max_tokens_of_output() -> None:
    # (1000 bytes + 4096 allowance) tokens at the 1-hour cache write's $6/M, 100 tokens at $15/M, in nano-dollars.
    assert reserve_nanousd(SONNET, 1000, False, 100, 200_000) == 5096 * 6000 + 100 * 15000
    haiku = LIST_PRICES["claude-haiku-4-5-20251001"]
    assert reserve_nanousd(haiku, 0, False, 1, None) == INPUT_ALLOWANCE * 2000 + 5000


def test_each_inline_image_adds_what_the_largest_image_costs() -> None:
    assert input_bound(300, False, 200_000, images=2) == 300 + INPUT_ALLOWANCE + 2 * IMAGE_ALLOWANCE
    # The reviewer's case: 100 one-bit 1092 x 1092 PNGs (304 bytes of base64 each, ~1,589 tokens each).
    assert reserve_nanousd(SONNET, 38_000, False, 1, 200_000, images=100) >= 100 * 1_589 * 3000


def test_a_cache_read_price_above_the_others_bounds_the_reserve() -> None:
    odd = Prices(Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(7))
    assert reserve_nanousd(odd, 0, False, 1, None) == INPUT_ALLOWANCE * 7000 + 1000


def test_fetched_content_is_bounded_by_the_context_window() -> None:
    assert input_bound(500, True, 200_000) == 200_000
    assert input_bound(500, True, None) == 500 + INPUT_ALLOWANCE + FETCHED_ALLOWANCE
    assert input_bound(300_000, False, 200_000) == 200_000  # never above what the model can read
    assert input_bound(2, False, 200_000) == 2 + INPUT_ALLOWANCE


def test_a_price_finer_than_a_nano_dollar_a_token_is_rounded_up() -> None:
    odd = Prices(Decimal("0.0001"), Decimal("0.0001"), Decimal("0.0001"), Decimal("0.0001"), Decimal("0.0001"))
    assert reserve_nanousd(odd, 0, False, 1, None) == INPUT_ALLOWANCE + 1


@pytest.mark.parametrize("model", [m.id for m in SEED_MODELS])
def test_the_reserve_covers_what_the_recorded_answers_cost(model: str) -> None:
    # Every recorded Anthropic answer's usage, priced, against the reserve of the smallest request that could
    # have produced it: an empty body, max_tokens equal to the output it got.
    prices = LIST_PRICES[model]
    checked = 0
    for path in sorted(FIXTURES.glob("*.json")):
        raw = orjson.loads(path.read_bytes())
        if not isinstance(raw, dict) or not isinstance(raw.get("usage"), dict):
            continue
        usage = Usage()
        usage.update(raw["usage"])
        if usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens > INPUT_ALLOWANCE:
            continue  # a request that big has a body at least that big; this bound needs no proof here
        reserve = reserve_nanousd(prices, 0, False, max(1, usage.output_tokens), None)
        assert reserve >= cost_nanousd(prices, usage), path.name
        checked += 1
    assert checked >= 3
