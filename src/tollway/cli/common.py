"""What the commands share: the --config flag, refusals, and money in and out."""

from __future__ import annotations

import argparse
from decimal import Decimal, DecimalException, Inexact, localcontext
from typing import TypeAlias, TypeVar

NANO = Decimal(1_000_000_000)
# The ledger's and the caps' columns are 64-bit integers of nano-dollars.
MAX_NANOUSD = 2**63 - 1

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


def parse_usd(raw: str) -> int:
    """Dollars as typed (``20``, ``0.1``, ``-5``) to nano-dollars, exactly: binary floats would turn 0.1 into
    0.1000000000000000055..., so the text goes through Decimal, and a fraction of a nano-dollar is refused
    rather than rounded."""
    try:
        dollars = Decimal(raw.strip())
    except DecimalException:
        raise argparse.ArgumentTypeError(f"not an amount of dollars: {raw!r}") from None
    if not dollars.is_finite():
        raise argparse.ArgumentTypeError(f"not an amount of dollars: {raw!r}")
    if dollars and dollars.adjusted() >= 10:
        raise argparse.ArgumentTypeError(f"{raw!r}: too large")
    # Enough digits for any amount below $1e10 to a nano-dollar, so rounding here means a sub-nano fraction.
    with localcontext(prec=40) as ctx:
        ctx.traps[Inexact] = True
        try:
            nano = (dollars * NANO).to_integral_exact()
        except Inexact:
            raise argparse.ArgumentTypeError(f"{raw!r}: the smallest unit is $0.000000001") from None
    if abs(nano) > MAX_NANOUSD:
        raise argparse.ArgumentTypeError(f"{raw!r}: too large")
    return int(nano)


def parse_usd_not_negative(raw: str) -> int:
    nano = parse_usd(raw)
    if nano < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: must be 0 or more")
    return nano


def usd(nano: int) -> str:
    """``$20.000000``: six decimals, the sign before the dollar."""
    dollars = (Decimal(abs(nano)) / NANO).quantize(Decimal("0.000001"))
    return f"{'-' if nano < 0 else ''}${dollars}"
