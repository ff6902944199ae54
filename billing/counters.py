"""The per-period budget counters (`PeriodSpend`) that reservations and settlements move.

One row for the organization and one for the member per calendar month (UTC). Whoever writes
them locks them in id order, so two turns never lock an organization's and a member's counter in
opposite orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from uuid import UUID

from django.db import DatabaseError
from django.db.models import Q, QuerySet, Subquery

from billing.models import Budget, PeriodSpend


def period_counters(*, organization_id: UUID, membership_id: UUID, start: date) -> tuple[PeriodSpend, PeriodSpend]:
    """The organization's and the member's counters for the period (created if missing), unlocked.

    Each carries the budgets set for the organization and for the member (`org_budget`,
    `member_budget`: None where none is set), read in the same query.
    """
    scope = Q(membership__isnull=True) | Q(membership_id=membership_id)
    budgets = Budget.objects.filter(organization_id=organization_id).order_by()
    for _ in range(2):
        rows = {
            row.membership_id: row
            for row in PeriodSpend.objects.filter(scope, organization_id=organization_id, period_start=start).annotate(
                org_budget=Subquery(budgets.filter(membership__isnull=True).values("monthly_limit_usd")[:1]),
                member_budget=Subquery(budgets.filter(membership_id=membership_id).values("monthly_limit_usd")[:1]),
            )
        }
        if None in rows and membership_id in rows:
            return rows[None], rows[membership_id]
        # Once a month per member. ON CONFLICT DO NOTHING: another turn may be creating them too.
        PeriodSpend.objects.bulk_create(
            [PeriodSpend(organization_id=organization_id, membership_id=m, period_start=start) for m in (None, membership_id) if m not in rows],
            ignore_conflicts=True,
        )
    raise DatabaseError("budget counters could not be created")


def counters_locked_in_id_order(ids: Sequence[int]) -> QuerySet[PeriodSpend]:
    """The counters, for an UPDATE that first locks them in id order (a sub-select FOR UPDATE)."""
    return PeriodSpend.objects.filter(id__in=PeriodSpend.objects.filter(id__in=ids).order_by("id").select_for_update().values("id"))


def counters_lock(ids: Sequence[int]) -> dict[int, PeriodSpend]:
    """The counters, read and locked in id order (inside a transaction)."""
    return {c.id: c for c in PeriodSpend.objects.select_for_update().filter(id__in=set(ids)).order_by("id")}
