"""Dollars in and out: exact nano-dollars, never a float."""

from __future__ import annotations

import argparse

import pytest

from tollway.cli.common import parse_usd, parse_usd_not_negative, usd


@pytest.mark.parametrize(("raw", "nano"), [
    ("0.1", 100_000_000), ("20", 20_000_000_000), ("-5", -5_000_000_000), ("0.000000001", 1), ("1e-9", 1),
    ("0.30", 300_000_000), ("1.5E3", 1_500_000_000_000), (" 2 ", 2_000_000_000), ("0", 0), ("-0", 0),
    ("1.000000000000000000000000000000000000000000", 1_000_000_000),  # zeros past the nano are no fraction
    ("9223372036.854775807", 2**63 - 1),  # the most the columns hold
])
def test_parse_usd_is_exact(raw: str, nano: int) -> None:
    assert parse_usd(raw) == nano


@pytest.mark.parametrize(("raw", "why"), [
    ("1e-10", "smallest unit"), ("0.0000000015", "smallest unit"), ("1e-999999999", "smallest unit"),
    ("abc", "not an amount"), ("", "not an amount"), ("$5", "not an amount"), ("1,5", "not an amount"),
    ("nan", "not an amount"), ("inf", "not an amount"), ("-Infinity", "not an amount"),
    ("9223372036.854775808", "too large"), ("1e10", "too large"), ("1e999999999", "too large"),
])
def test_parse_usd_refuses(raw: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        parse_usd(raw)


def test_not_negative() -> None:
    assert parse_usd_not_negative("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="0 or more"):
        parse_usd_not_negative("-0.000000001")


@pytest.mark.parametrize(("nano", "text"), [
    (20_000_000_000, "$20.000000"), (0, "$0.000000"), (-5_250_000_000, "-$5.250000"), (1_234_567, "$0.001235"),
    (10**18, "$1000000000.000000"),
])
def test_usd(nano: int, text: str) -> None:
    assert usd(nano) == text
