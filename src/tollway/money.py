"""Money as operators type it and as Tollway keeps it: integer nano-dollars (1e-9 USD), never a float.

Shared by the CLI and the admin API, so an amount means the same whichever way it arrives.
"""

from __future__ import annotations

from decimal import Decimal, DecimalException, Inexact, localcontext

NANO = Decimal(1_000_000_000)
# The ledger's and the caps' columns are 64-bit integers of nano-dollars.
MAX_NANOUSD = 2**63 - 1


def parse_nanousd(raw: str) -> int:
    """Dollars as typed (``20``, ``0.1``, ``-5``) to nano-dollars, exactly: binary floats would turn 0.1 into
    0.1000000000000000055..., so the text goes through Decimal, and a fraction of a nano-dollar is refused
    rather than rounded. A ValueError says what is wrong."""
    try:
        dollars = Decimal(raw.strip())
    except DecimalException:
        raise ValueError(f"not an amount of dollars: {raw!r}") from None
    if not dollars.is_finite():
        raise ValueError(f"not an amount of dollars: {raw!r}")
    if dollars and dollars.adjusted() >= 10:
        raise ValueError(f"{raw!r}: too large")
    # Enough digits for any amount below $1e10 to a nano-dollar, so rounding here means a sub-nano fraction.
    with localcontext(prec=40) as ctx:
        ctx.traps[Inexact] = True
        try:
            nano = (dollars * NANO).to_integral_exact()
        except Inexact:
            raise ValueError(f"{raw!r}: the smallest unit is $0.000000001") from None
    if abs(nano) > MAX_NANOUSD:
        raise ValueError(f"{raw!r}: too large")
    return int(nano)


def usd_exact(nano: int) -> str:
    """``20.000000000``: every nano-dollar shown, for machines (JSON, CSV) rather than for reading."""
    return f"{Decimal(nano).scaleb(-9):.9f}"
