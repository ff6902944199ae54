"""Budget periods are calendar months in UTC: spend resets at 00:00 UTC on the 1st of each month."""

from datetime import UTC, date, datetime


def period_start(at: datetime) -> date:
    at = at.astimezone(UTC)
    return date(at.year, at.month, 1)


def period_end(at: datetime) -> datetime:
    """The first instant of the next period (when the budget resets)."""
    start = period_start(at)
    if start.month == 12:
        return datetime(start.year + 1, 1, 1, tzinfo=UTC)
    return datetime(start.year, start.month + 1, 1, tzinfo=UTC)


def period_start_datetime(at: datetime) -> datetime:
    start = period_start(at)
    return datetime(start.year, start.month, 1, tzinfo=UTC)
