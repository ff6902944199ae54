"""Money as people read it in Parley's messages (refusals, alert e-mails)."""

from __future__ import annotations

from decimal import Decimal

ZERO = Decimal(0)


def usd(value: Decimal) -> str:
    cents = value.quantize(Decimal("0.01"))
    if cents != value and abs(value) < 1:
        return f"${value.quantize(Decimal('0.0001'))}"
    return f"${cents}"
