"""The daily usage summary: the ledger's finished days rolled into `DailyUsage` for the usage pages;
and the audited export of the ledger.

Credits and refunds (billing.credits) roll up too, so DailyUsage sums equal ledger sums: one row
per day, organization and member (none) with `model` "" (CREDIT_MODEL) and no calls. Per-model
reports leave those rows out and list the credits from the ledger with their reasons.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import Membership
from billing.models import DailyUsage, LedgerEntry, LedgerKind, RollupState
from billing.selectors import ledger_for_export


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
                n=Count("id", filter=Q(kind=LedgerKind.USAGE)),  # a credit is not a call
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


def usage_export(
    *,
    membership: Membership,
    start: date,
    end: date,
    channel: str = "csv",
    offset: int | None = None,
    limit: int | None = None,
) -> Iterator[LedgerEntry]:
    """The ledger rows of days [start, end) the member may export (the whole organization for
    owners and admins, else their own), after recording `usage.export` with the range and filters.

    The event is written first, in its own transaction: an export the caller then streams is
    recorded even if the client stops reading half-way.
    """
    whole = membership.is_admin
    filters = {
        "start": start.isoformat(),
        "end": (end - timedelta(days=1)).isoformat(),  # inclusive, as the export's form reads
        "scope": "organization" if whole else "member",
        "format": channel,
    }
    if not whole:
        filters["member"] = membership.user.email
    if offset is not None:
        filters["offset"] = offset
    if limit is not None:
        filters["limit"] = limit
    organization = membership.organization
    with transaction.atomic():
        audit_record(
            "usage.export",
            organization=organization.pk,
            target=organization,
            target_label=f"Usage of {organization.name}",
            changes={name: [None, value] for name, value in filters.items()},
        )
    return ledger_for_export(organization=organization, start=start, end=end, membership=None if whole else membership)
