"""The call log rolled up per UTC day, provider and model, and the staff console's reads over it.

Finished days of `ProviderCall` are summed into `ProviderCallDaily` by `call_log_rollup` (a beat
task, llm.tasks); days from the watermark on are read from the log itself, so a range's figures are
the rolled days plus the un-rolled tail, added the same way.

Latency percentiles come from histograms with fixed buckets (the same for rolled days and the
tail, so any range's histograms add up exactly):

- below 16 ms each millisecond is a bucket of its own: percentiles there are exact;
- from 16 ms on, bucket lower bounds grow by 2^(1/8) (≈ 9 %) up to past 2^31 ms. A percentile is
  reported as the middle of the bucket that holds the exact value, so it is within 4.6 % of it.

Percentiles are nearest-rank: p50 is the value at rank ceil(0.50 · n) of the n calls, in order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, F, Func, IntegerField, Q, Sum, Value
from django.db.models.functions import TruncDate
from django.utils import timezone

from llm.models import CallStatus, ProviderCall, ProviderCallDaily, ProviderCallRollupState
from llm.providers.base import redact

EXACT_BELOW_MS = 16
RATIO = 2 ** (1 / 8)
RELATIVE_PRECISION = 0.046  # a reported percentile is within this fraction of the exact one (from 16 ms on)


def _lower_bounds() -> list[int]:
    bounds = list(range(EXACT_BELOW_MS))
    step = 0
    while bounds[-1] <= 2**31:
        bounds.append(math.ceil(EXACT_BELOW_MS * RATIO**step - 1e-9))
        step += 1
    return bounds


BUCKET_LOWER: list[int] = _lower_bounds()  # bucket k holds the values in [BUCKET_LOWER[k], BUCKET_LOWER[k + 1])

# Calls are logged after they end (a long stream minutes after it started, a retried write up to
# two minutes later, a dead process's call when the sweeper recovers it), so a day is rolled only
# once it has been over for this long.
ROLLUP_GRACE = timedelta(hours=1)


def bucket_of(value_ms: int) -> int:
    return bisect.bisect_right(BUCKET_LOWER, value_ms) - 1


def bucket_value(index: int) -> float:
    """The value reported for a bucket: the middle of the whole milliseconds it holds."""
    low = BUCKET_LOWER[index]
    high = BUCKET_LOWER[index + 1] - 1 if index + 1 < len(BUCKET_LOWER) else low
    return (low + high) / 2


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """Nearest-rank percentile of a histogram ({bucket: count}); None when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(histogram))  # unreachable: the counts add up to total


def _merge(into: dict[int, int], histogram: dict) -> None:
    for index, count in histogram.items():
        index = int(index)  # JSON keys are strings
        into[index] = into.get(index, 0) + count


@dataclass
class CallStats:
    """Calls of one provider and model (over a day, or a range of days)."""

    provider: str
    model: str
    calls: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_count: int = 0
    ttft_sum_ms: int = 0
    ttft_histogram: dict[int, int] = field(default_factory=dict)
    duration_sum_ms: int = 0
    duration_histogram: dict[int, int] = field(default_factory=dict)

    def add(self, other: CallStats) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.cancelled += other.cancelled
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.ttft_count += other.ttft_count
        self.ttft_sum_ms += other.ttft_sum_ms
        self.duration_sum_ms += other.duration_sum_ms
        _merge(self.ttft_histogram, other.ttft_histogram)
        _merge(self.duration_histogram, other.duration_histogram)

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def error_percent(self) -> float:
        return 100 * self.error_rate

    @property
    def ttft_p50(self) -> float | None:
        return percentile(self.ttft_histogram, 0.50)

    @property
    def ttft_p95(self) -> float | None:
        return percentile(self.ttft_histogram, 0.95)

    @property
    def duration_p50(self) -> float | None:
        return percentile(self.duration_histogram, 0.50)

    @property
    def duration_p95(self) -> float | None:
        return percentile(self.duration_histogram, 0.95)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _bucket_expression(column: str):
    """PostgreSQL buckets in the database (width_bucket over the lower bounds); elsewhere the
    raw value is grouped and bucketed here (the embedded SQLite database is small)."""
    if connection.vendor == "postgresql":
        return Func(F(column), Value(BUCKET_LOWER[1:]), function="width_bucket", output_field=IntegerField())
    return F(column)


def _aggregate(start: datetime, end: datetime) -> dict[tuple[date, str, str], CallStats]:
    """The log's calls that started in [start, end), per (UTC day, provider, model)."""
    calls = ProviderCall.objects.filter(started_at__gte=start, started_at__lt=end).annotate(
        day=TruncDate("started_at", tzinfo=UTC)
    )
    groups: dict[tuple[date, str, str], CallStats] = {}
    for row in (
        calls.values("day", "provider", "model")
        .annotate(
            n=Count("id"),
            e=Count("id", filter=Q(status=CallStatus.ERROR)),
            c=Count("id", filter=Q(status=CallStatus.CANCELLED)),
            i=Sum("input_tokens"),
            o=Sum("output_tokens"),
            tn=Count("time_to_first_token_ms"),
            ts=Sum("time_to_first_token_ms"),
            ds=Sum("duration_ms"),
        )
        .order_by()
    ):
        groups[(row["day"], row["provider"], row["model"])] = CallStats(
            provider=row["provider"],
            model=row["model"],
            calls=row["n"],
            errors=row["e"],
            cancelled=row["c"],
            input_tokens=row["i"] or 0,
            output_tokens=row["o"] or 0,
            ttft_count=row["tn"],
            ttft_sum_ms=row["ts"] or 0,
            duration_sum_ms=row["ds"] or 0,
        )
    bucketed = connection.vendor == "postgresql"
    for column, attribute in (("time_to_first_token_ms", "ttft_histogram"), ("duration_ms", "duration_histogram")):
        rows = (
            calls.filter(**{f"{column}__isnull": False})
            .annotate(bucket=_bucket_expression(column))
            .values("day", "provider", "model", "bucket")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            histogram = getattr(groups[(row["day"], row["provider"], row["model"])], attribute)
            index = row["bucket"] if bucketed else bucket_of(row["bucket"])
            histogram[index] = histogram.get(index, 0) + row["n"]
    return groups


def call_log_rollup(*, through: date | None = None, since: date | None = None) -> int:
    """Roll the call log's days in [since, through) into ProviderCallDaily; move the watermark to `through`.

    `through` defaults to the day that ended at least ROLLUP_GRACE ago (UTC); `since` to the current
    watermark (or the log's first day). Re-rolling a day replaces its rows. Returns the rows written.
    """
    through = through or (timezone.now() - ROLLUP_GRACE).astimezone(UTC).date()
    with transaction.atomic():
        state, _ = ProviderCallRollupState.objects.select_for_update().get_or_create(pk=1)
        if since is None:
            since = state.rolled_through
        if since is None:
            first = ProviderCall.objects.order_by("started_at").values_list("started_at", flat=True).first()
            since = first.astimezone(UTC).date() if first else through
        if since >= through:
            return 0
        ProviderCallDaily.objects.filter(day__gte=since, day__lt=through).delete()
        summary = [
            ProviderCallDaily(
                day=day,
                provider=provider,
                model=model,
                calls=stats.calls,
                errors=stats.errors,
                cancelled=stats.cancelled,
                input_tokens=stats.input_tokens,
                output_tokens=stats.output_tokens,
                ttft_count=stats.ttft_count,
                ttft_sum_ms=stats.ttft_sum_ms,
                ttft_histogram={str(k): v for k, v in sorted(stats.ttft_histogram.items())},
                duration_sum_ms=stats.duration_sum_ms,
                duration_histogram={str(k): v for k, v in sorted(stats.duration_histogram.items())},
            )
            for (day, provider, model), stats in _aggregate(_day_start(since), _day_start(through)).items()
        ]
        ProviderCallDaily.objects.bulk_create(summary, batch_size=1000)
        if state.rolled_through is None or through > state.rolled_through:
            state.rolled_through = through
        state.save()
    return len(summary)


def _rolled_through() -> date | None:
    state = ProviderCallRollupState.objects.filter(pk=1).first()
    return state.rolled_through if state else None


# ProviderCallDaily's columns in the order of CallStats' fields
_DAILY_FIELDS = ("provider", "model", "calls", "errors", "cancelled", "input_tokens", "output_tokens", "ttft_count",
                 "ttft_sum_ms", "ttft_histogram", "duration_sum_ms", "duration_histogram")


def _merged(parts: Iterable[CallStats], key) -> dict:
    merged: dict = {}
    for part in parts:
        k = key(part)
        if k not in merged:
            merged[k] = CallStats(provider=part.provider, model=part.model)
        merged[k].add(part)
    return merged


def call_log_stats(*, start: date, end: date) -> list[CallStats]:
    """Calls per provider and model that started on days in [start, end), most calls first.

    Days before the watermark come from ProviderCallDaily (a row per day, provider and model);
    later ones are aggregated from the log, which then holds a day or two.
    """
    rolled = _rolled_through()
    split = min(max(rolled, start), end) if rolled else start
    parts = [
        CallStats(*row)
        for row in ProviderCallDaily.objects.filter(day__gte=start, day__lt=split).values_list(*_DAILY_FIELDS)
    ]
    if split < end:
        parts.extend(_aggregate(_day_start(split), _day_start(end)).values())
    merged = _merged(parts, key=lambda part: (part.provider, part.model))
    return sorted(merged.values(), key=lambda s: (-s.calls, s.provider, s.model))


@dataclass(frozen=True)
class CallFailure:
    started_at: datetime
    provider: str
    model: str
    attempt: int
    error_class: str
    message: str  # short, and redacted when it was written
    request_id: str
    organization_id: object


FAILURE_MESSAGE_CHARS = 120


def call_log_failures(*, limit: int = 20) -> list[CallFailure]:
    """The latest failed provider calls, newest first (the log keeps messages redacted of keys)."""
    rows = (
        ProviderCall.objects.filter(status=CallStatus.ERROR)
        .order_by("-started_at")
        .values_list("started_at", "provider", "model", "attempt", "error_class", "error_message", "request_id",
                     "organization_id")[:limit]
    )
    failures = []
    for started_at, provider, model, attempt, error_class, message, request_id, organization_id in rows:
        short = " ".join(redact(message).split())
        if len(short) > FAILURE_MESSAGE_CHARS:
            short = short[: FAILURE_MESSAGE_CHARS - 1] + "…"
        failures.append(
            CallFailure(started_at, provider, model, attempt, error_class, short, request_id, organization_id)
        )
    return failures
