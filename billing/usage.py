"""The daily usage summary: the ledger's finished days rolled into `DailyUsage` for the usage pages."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import DailyUsage, LedgerEntry, RollupState


def usage_rollup(*, through: date | None = None, since: date | None = None) -> int:
    """Roll the ledger's days in [since, through) into DailyUsage and move the watermark to `through`.

    `through` defaults to today (UTC), so only finished days are rolled; `since` defaults to the
    current watermark (or the ledger's first day). Re-rolling a day replaces its rows.
    Returns how many summary rows were written.
    """
    through = through or timezone.now().astimezone(UTC).date()
    with transaction.atomic():
        state, _ = RollupState.objects.select_for_update().get_or_create(pk=1)
        if since is None:
            since = state.rolled_through
        if since is None:
            first = LedgerEntry.objects.order_by("created_at").values_list("created_at", flat=True).first()
            since = first.astimezone(UTC).date() if first else through
        if since >= through:
            return 0
        start = datetime(since.year, since.month, since.day, tzinfo=UTC)
        end = datetime(through.year, through.month, through.day, tzinfo=UTC)
        DailyUsage.objects.filter(day__gte=since, day__lt=through).delete()
        rows = (
            LedgerEntry.objects.filter(created_at__gte=start, created_at__lt=end)
            .annotate(day=TruncDate("created_at", tzinfo=UTC))
            .values("day", "organization_id", "membership_id", "model")
            .annotate(
                n=Count("id"),
                i=Sum("input_tokens"),
                o=Sum("output_tokens"),
                ci=Sum("cached_input_tokens"),
                c=Sum("cost"),
            )
            .order_by()
        )
        summary = [
            DailyUsage(
                day=row["day"],
                organization_id=row["organization_id"],
                membership_id=row["membership_id"],
                model=row["model"],
                calls=row["n"],
                input_tokens=row["i"] or 0,
                output_tokens=row["o"] or 0,
                cached_input_tokens=row["ci"] or 0,
                cost=Decimal(row["c"] or 0).quantize(Decimal("1e-12")),
            )
            for row in rows.iterator(chunk_size=5000)
        ]
        DailyUsage.objects.bulk_create(summary, batch_size=2000)
        if state.rolled_through is None or through > state.rolled_through:
            state.rolled_through = through
        state.updated_at = timezone.now()
        state.save()
    return len(summary)
