"""Geometry of the server-rendered SVG spend-per-day bar chart (no JavaScript, no CDN), shared by
the usage page and the staff console."""

from datetime import date
from decimal import Decimal

CHART_WIDTH = 720
CHART_HEIGHT = 160


def day_bars(by_day: list[tuple[date, Decimal]]) -> dict:
    """One bar per day, scaled to the largest; a day whose credits exceed its usage (a negative
    sum) draws no bar."""
    top = max((cost for _, cost in by_day), default=Decimal(0))
    slot = CHART_WIDTH / max(1, len(by_day))
    bars = []
    for index, (day, cost) in enumerate(by_day):
        height = max(float(cost / top) * (CHART_HEIGHT - 20), 0.0) if top > 0 else 0.0
        bars.append(
            {
                "x": round(index * slot + 1, 1),
                "y": round(CHART_HEIGHT - height, 1),
                "width": round(max(1.0, slot - 2), 1),
                "height": round(height, 1),
                "day": day,
                "cost": cost,
                "label": index == 0 or day.day == 1 or day.day % 5 == 0,
                "label_x": round(index * slot + slot / 2, 1),
            }
        )
    return {"bars": bars, "width": CHART_WIDTH, "height": CHART_HEIGHT, "top": top}
