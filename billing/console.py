"""Reads of the staff console (config.admin): spend across every organization, budgets near their
limit, the provider call log, streams in progress and recent failures. Staff only: nothing here is
scoped to a tenant, so only the admin's console view calls it.

Spend comes from the daily summary (billing.usage: days before RollupState.rolled_through) plus the
ledger's un-rolled tail, so it stays a few hundred rows of work whatever the ledger's size; the call
log the same way from llm.rollup. The sums are exact Decimals (the ledger's 12 places).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Membership, Organization
from billing.models import Budget, DailyUsage, LedgerEntry, PeriodSpend, Reservation, ReservationStatus, RollupState
from billing.periods import period_end, period_start
from llm.rollup import CallFailure, CallStats, call_log_failures, call_log_stats

ZERO = Decimal(0)
_PLACES = Decimal("1e-12")
NEAR_PERCENT = Decimal(75)
TOP = 10


def _exact(value) -> Decimal:
    """A summed cost at the ledger's precision (SQLite sums decimals as floats; PostgreSQL exactly)."""
    return ZERO if value is None else Decimal(value).quantize(_PLACES)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def console_default_range(*, at: datetime | None = None) -> tuple[date, date]:
    """This month in UTC, as [first day, last day] inclusive."""
    at = at or timezone.now()
    return period_start(at), period_end(at).date() - timedelta(days=1)


@dataclass
class _Totals:
    cost: Decimal = ZERO
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def _spend_by(*fields: str, start: date, end: date) -> dict[tuple, _Totals]:
    """Ledger totals of days in [start, end) grouped by `fields` (of DailyUsage: day, organization_id,
    membership_id, model): rolled days from the summary, the rest from the ledger."""
    state = RollupState.objects.filter(pk=1).first()
    rolled = state.rolled_through if state else None
    split = min(max(rolled, start), end) if rolled else start
    totals: dict[tuple, _Totals] = {}

    def add(key: tuple, cost, calls, inp, out) -> None:
        row = totals.setdefault(key, _Totals())
        row.cost += _exact(cost)
        row.calls += calls or 0
        row.input_tokens += inp or 0
        row.output_tokens += out or 0

    if split > start:
        for row in (
            DailyUsage.objects.filter(day__gte=start, day__lt=split)
            .values(*fields)
            .annotate(c=Sum("cost"), n=Sum("calls"), i=Sum("input_tokens"), o=Sum("output_tokens"))
            .order_by()
        ):
            add(tuple(row[f] for f in fields), row["c"], row["n"], row["i"], row["o"])
    if end > split:
        tail = LedgerEntry.objects.filter(created_at__gte=_day_start(split), created_at__lt=_day_start(end))
        if "day" in fields:
            tail = tail.annotate(day=TruncDate("created_at", tzinfo=UTC))
        for row in (
            tail.values(*fields)
            .annotate(c=Sum("cost"), n=Count("id"), i=Sum("input_tokens"), o=Sum("output_tokens"))
            .order_by()
        ):
            add(tuple(row[f] for f in fields), row["c"], row["n"], row["i"], row["o"])
    return totals


@dataclass(frozen=True)
class OrganizationSpend:
    organization_id: UUID
    name: str
    slug: str
    cost: Decimal
    calls: int


@dataclass(frozen=True)
class ModelSpend:
    model: str
    cost: Decimal
    calls: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class MemberSpend:
    membership_id: UUID | None
    email: str
    organization_name: str
    cost: Decimal
    calls: int


@dataclass(frozen=True)
class SpendReport:
    start: date
    end: date  # exclusive
    total_cost: Decimal
    total_calls: int
    by_organization: list[OrganizationSpend]
    by_model: list[ModelSpend]
    by_day: list[tuple[date, Decimal]]


def _organizations(ids) -> dict[UUID, Organization]:
    return {o.id: o for o in Organization.objects.filter(id__in=list(ids)).only("id", "name", "slug")}


def spend_by_organization(*, start: date, end: date) -> list[OrganizationSpend]:
    """Every organization that spent on days in [start, end), highest spend first."""
    totals = _spend_by("organization_id", start=start, end=end)
    organizations = _organizations(key[0] for key in totals)
    rows = []
    for (organization_id,), total in totals.items():
        organization = organizations.get(organization_id)
        rows.append(
            OrganizationSpend(
                organization_id=organization_id,
                name=organization.name if organization else "(deleted)",
                slug=organization.slug if organization else "",
                cost=total.cost,
                calls=total.calls,
            )
        )
    return sorted(rows, key=lambda r: (-r.cost, r.name))


def spend_by_model(*, start: date, end: date) -> list[ModelSpend]:
    totals = _spend_by("model", start=start, end=end)
    rows = [ModelSpend(model, t.cost, t.calls, t.input_tokens, t.output_tokens) for (model,), t in totals.items()]
    return sorted(rows, key=lambda r: (-r.cost, r.model))


def spend_by_day(*, start: date, end: date) -> list[tuple[date, Decimal]]:
    """Every day in [start, end), with zero for days without spend."""
    totals = _spend_by("day", start=start, end=end)
    days = []
    day = start
    while day < end:
        total = totals.get((day,))
        days.append((day, total.cost if total else ZERO))
        day += timedelta(days=1)
    return days


def spend_report(*, start: date, end: date) -> SpendReport:
    """Spend of the whole platform on days in [start, end): per organization, per model, per day."""
    by_organization = spend_by_organization(start=start, end=end)
    return SpendReport(
        start=start,
        end=end,
        total_cost=sum((r.cost for r in by_organization), ZERO),
        total_calls=sum(r.calls for r in by_organization),
        by_organization=by_organization,
        by_model=spend_by_model(start=start, end=end),
        by_day=spend_by_day(start=start, end=end),
    )


def top_members(*, start: date, end: date, limit: int = TOP) -> list[MemberSpend]:
    totals = _spend_by("membership_id", start=start, end=end)
    top = sorted(totals.items(), key=lambda item: -item[1].cost)[:limit]
    members = {
        m.id: m
        for m in Membership.objects.filter(id__in=[k[0] for k, _ in top if k[0]]).select_related("user", "organization")
    }
    rows = []
    for (membership_id,), total in top:
        member = members.get(membership_id)
        rows.append(
            MemberSpend(
                membership_id=membership_id,
                email=member.user.email if member else "(former member)",
                organization_name=member.organization.name if member else "",
                cost=total.cost,
                calls=total.calls,
            )
        )
    return rows


@dataclass(frozen=True)
class BudgetWatch:
    organization_id: UUID
    name: str
    slug: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    overridden: bool  # a staff Budget row, not the tier's monthly budget

    @property
    def percent(self) -> Decimal:
        if self.limit <= 0:
            return Decimal(100)
        return (self.spent * 100 / self.limit).quantize(Decimal("0.1"))

    @property
    def level(self) -> str:
        return "over" if self.percent >= 100 else "near"


def budgets_near_or_over(*, at: datetime | None = None, near_percent: Decimal = NEAR_PERCENT) -> list[BudgetWatch]:
    """Organizations whose spend this period (their PeriodSpend counter) is at `near_percent` or more
    of their budget (the staff override, else their tier's), fullest first."""
    at = at or timezone.now()
    counters = list(
        PeriodSpend.objects.filter(period_start=period_start(at), membership__isnull=True)
        .select_related("organization__tier")
        .only("spent", "reserved", "organization__name", "organization__slug", "organization__tier__monthly_budget_usd")
    )
    overrides = dict(
        Budget.objects.filter(
            membership__isnull=True, organization_id__in=[c.organization_id for c in counters]
        ).values_list("organization_id", "monthly_limit_usd")
    )
    watched = []
    for counter in counters:
        organization = counter.organization
        override = overrides.get(organization.id)
        row = BudgetWatch(
            organization_id=organization.id,
            name=organization.name,
            slug=organization.slug,
            limit=override if override is not None else organization.tier.monthly_budget_usd,
            spent=counter.spent,
            reserved=counter.reserved,
            overridden=override is not None,
        )
        if row.percent >= near_percent:
            watched.append(row)
    return sorted(watched, key=lambda r: (-r.percent, r.name))


@dataclass(frozen=True)
class ActiveStream:
    request_id: str
    organization_name: str
    email: str
    model: str
    amount: Decimal
    created_at: datetime
    heartbeat_at: datetime | None
    expires_at: datetime


@dataclass(frozen=True)
class ActiveStreams:
    count: int
    held: Decimal  # the worst-case cost reserved by them
    latest: list[ActiveStream]


def active_streams(*, limit: int = 25) -> ActiveStreams:
    """Turns in progress: their reservations are still open."""
    open_ = Reservation.objects.filter(status=ReservationStatus.OPEN)
    summary = open_.aggregate(n=Count("id"), held=Sum("amount"))
    latest = [
        ActiveStream(
            request_id=r.request_id,
            organization_name=r.organization.name,
            email=r.membership.user.email if r.membership else "",
            model=r.model,
            amount=r.amount,
            created_at=r.created_at,
            heartbeat_at=r.heartbeat_at,
            expires_at=r.expires_at,
        )
        for r in open_.select_related("organization", "membership__user").order_by("-created_at")[:limit]
    ]
    return ActiveStreams(count=summary["n"], held=_exact(summary["held"]), latest=latest)


@dataclass(frozen=True)
class Console:
    start: date
    end: date  # exclusive
    period_start: date
    spend: SpendReport
    top_organizations: list[OrganizationSpend]
    top_members: list[MemberSpend]
    budgets: list[BudgetWatch]
    calls: list[CallStats]
    failures: list[CallFailure]
    streams: ActiveStreams

    @property
    def total_provider_calls(self) -> int:
        return sum(s.calls for s in self.calls)

    @property
    def total_provider_errors(self) -> int:
        return sum(s.errors for s in self.calls)


def console_overview(*, start: date, end: date, at: datetime | None = None) -> Console:
    """Everything the console page shows, for days in [start, end); "this period" is the budget month of `at`."""
    at = at or timezone.now()
    this_period = period_start(at)
    period_stop = period_end(at).date()
    spend = spend_report(start=start, end=end)
    if (start, end) == (this_period, period_stop):
        top_organizations = spend.by_organization[:TOP]
    else:
        top_organizations = spend_by_organization(start=this_period, end=period_stop)[:TOP]
    return Console(
        start=start,
        end=end,
        period_start=this_period,
        spend=spend,
        top_organizations=top_organizations,
        top_members=top_members(start=this_period, end=period_stop),
        budgets=budgets_near_or_over(at=at),
        calls=call_log_stats(start=start, end=end),
        failures=call_log_failures(limit=20),
        streams=active_streams(),
    )
