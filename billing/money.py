"""Money as people read it in Parley's messages (refusals, alert e-mails)."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

ZERO = Decimal(0)
CENT = Decimal("0.01")


def usd(value: Decimal, *, rounding: str = ROUND_HALF_EVEN) -> str:
    """`$12.34` for a dollar and more; below a dollar, cents or two significant digits, whichever is finer.

    So $0.25 stays `$0.25`, but a cost of $0.0000124 reads `$0.000012`, not `$0.00`. `rounding`:
    ROUND_FLOOR for what is left, ROUND_CEILING for what may be charged, so the two never read the
    same when one is smaller than the other.
    """
    if value == 0:
        return "$0.00"
    sign = "-" if value < 0 else ""
    value = abs(value)
    # Below a dollar, two significant digits: the place of the first one, and one more.
    exponent = -2 if value >= 1 else max(-12, min(-2, value.adjusted() - 1))
    places = Decimal(1).scaleb(exponent)
    shown = value.quantize(places, rounding=rounding)
    if shown == 0:  # finer than the ledger's own precision
        return "$0.00"
    text = f"{shown:f}"
    if places < CENT:  # $0.0060 → $0.006, but never fewer than two decimals
        whole, _, decimals = text.partition(".")
        text = f"{whole}.{decimals.rstrip('0').ljust(2, '0')}"
    return f"{sign}${text}"


def usd_left(value: Decimal) -> str:
    """An amount still available, never shown larger than it is."""
    return usd(value, rounding=ROUND_FLOOR)


def usd_cost(value: Decimal) -> str:
    """An amount that may be charged, never shown smaller than it is."""
    return usd(value, rounding=ROUND_CEILING)
