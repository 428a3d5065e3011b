"""What the commands share: the --config flag, refusals, and money in and out."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import Decimal
from typing import TypeAlias, TypeVar

from tollway.money import NANO, parse_nanousd
from tollway.store.records import NAME_LENGTH

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Refused(Exception):
    """A command that cannot do what it was asked; main prints the message and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


T = TypeVar("T")


def found(record: T | None, missing: str) -> T:
    if record is None:
        raise Refused(missing)
    return record


def config_parent() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: $TOLLWAY_CONFIG, then ./tollway.toml)")
    return common


def as_argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A parser that raises ValueError, for argparse, which shows only an ArgumentTypeError's own message."""

    def convert(raw: str) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


parse_usd = as_argument(parse_nanousd)


def parse_name(raw: str) -> str:
    """A key's or account's name: one line (names are listed one a line), no longer than its column."""
    name = raw.strip()
    if not name:
        raise argparse.ArgumentTypeError("must not be empty")
    if len(name) > NAME_LENGTH:
        raise argparse.ArgumentTypeError(f"must be at most {NAME_LENGTH} characters (got {len(name)})")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise argparse.ArgumentTypeError("must not contain control characters (line breaks, tabs, NUL, ...)")
    return name


def parse_usd_not_negative(raw: str) -> int:
    nano = parse_usd(raw)
    if nano < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: must be 0 or more")
    return nano


def usd(nano: int) -> str:
    """``$20.000000``: six decimals, the sign before the dollar."""
    dollars = (Decimal(abs(nano)) / NANO).quantize(Decimal("0.000001"))
    return f"{'-' if nano < 0 else ''}${dollars}"
