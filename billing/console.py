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

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Membership, Organization
from billing.models import (
    Budget,
    DailyUsage,
    LedgerEntry,
    LedgerKind,
    PeriodSpend,
    Reservation,
    ReservationStatus,
    RollupState,
)
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


KEYS = ("organization_id", "model", "day", "membership_id")
SUMMARY_CACHE_SECONDS = 3600
CREDITS_MODEL = ""  # the model of credit and refund rows (billing.credits), in the ledger and DailyUsage


@dataclass
class _SpendSets:
    """Totals of one range grouped four ways: {key name: {value: _Totals}}."""

    by: dict[str, dict]

    def add(self, key: str, value, cost, calls, inp, out) -> None:
        row = self.by[key].setdefault(value, _Totals())
        row.cost += _exact(cost)
        row.calls += int(calls or 0)  # PostgreSQL sums bigints as numeric
        row.input_tokens += int(inp or 0)
        row.output_tokens += int(out or 0)


def _summary_sets(sets: _SpendSets, start: date, end: date) -> None:
    """The daily summary's days in [start, end): on PostgreSQL one scan (GROUPING SETS), else a query per key."""
    if connection.vendor == "postgresql":
        table = DailyUsage._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT GROUPING(organization_id), GROUPING(model), GROUPING(day), organization_id, model, day,
                           membership_id, SUM(cost), SUM(calls), SUM(input_tokens), SUM(output_tokens)
                    FROM {table} WHERE day >= %s AND day < %s
                    GROUP BY GROUPING SETS ((organization_id), (model), (day), (membership_id))""",
                [start, end],
            )
            for g_org, g_model, g_day, organization_id, model, day, membership_id, *sums in cursor.fetchall():
                if not g_org:
                    sets.add("organization_id", organization_id, *sums)
                elif not g_model:
                    sets.add("model", model, *sums)
                elif not g_day:
                    sets.add("day", day, *sums)
                else:
                    sets.add("membership_id", membership_id, *sums)
        return
    for key in KEYS:
        for row in (
            DailyUsage.objects.filter(day__gte=start, day__lt=end)
            .values(key)
            .annotate(c=Sum("cost"), n=Sum("calls"), i=Sum("input_tokens"), o=Sum("output_tokens"))
            .order_by()
        ):
            sets.add(key, row[key], row["c"], row["n"], row["i"], row["o"])


def _ledger_sets(sets: _SpendSets, start: date, end: date) -> None:
    """The ledger's rows of days in [start, end) (the un-rolled tail: a day or two), in one query."""
    tail = LedgerEntry.objects.filter(created_at__gte=_day_start(start), created_at__lt=_day_start(end))
    if connection.vendor == "postgresql":
        # The ledger's index is (organization, created_at): naming every organization lets PostgreSQL
        # read just the tail through it instead of scanning the whole ledger for a time range.
        tail = tail.filter(organization_id__in=list(Organization.objects.values_list("id", flat=True)))
    for row in (
        tail.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values(*KEYS)
        .annotate(
            c=Sum("cost"),
            n=Count("id", filter=Q(kind=LedgerKind.USAGE)),  # a credit or refund is not a call (as in DailyUsage)
            i=Sum("input_tokens"),
            o=Sum("output_tokens"),
        )
        .order_by()
    ):
        for key in KEYS:
            sets.add(key, row[key], row["c"], row["n"], row["i"], row["o"])


def _spend_sets(*, start: date, end: date) -> _SpendSets:
    """Ledger totals of days in [start, end) per organization, model, day and member: rolled days
    from the summary, the rest from the ledger."""
    state = RollupState.objects.filter(pk=1).first()
    rolled = state.rolled_through if state else None
    split = min(max(rolled, start), end) if rolled else start
    sets = _SpendSets(by={key: {} for key in KEYS})
    if split > start:
        # Rolled days change only when the rollup runs (it stamps updated_at), so their totals are
        # kept in the cache under that stamp: a page view then reads just the ledger's tail.
        cache_key = f"billing.console.summary:{start}:{split}:{state.updated_at.timestamp()}"
        cached = cache.get(cache_key)
        if cached is None:
            _summary_sets(sets, start, split)
            cache.set(cache_key, sets.by, SUMMARY_CACHE_SECONDS)
        else:
            sets.by = cached
    if end > split:
        _ledger_sets(sets, split, end)
    return sets


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


def _by_organization(sets: _SpendSets) -> list[OrganizationSpend]:
    totals = sets.by["organization_id"]
    organizations = _organizations(totals)
    rows = []
    for organization_id, total in totals.items():
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


def _by_model(sets: _SpendSets) -> list[ModelSpend]:
    rows = [ModelSpend(model, t.cost, t.calls, t.input_tokens, t.output_tokens) for model, t in sets.by["model"].items()]
    return sorted(rows, key=lambda r: (-r.cost, r.model))


def _by_day(sets: _SpendSets, start: date, end: date) -> list[tuple[date, Decimal]]:
    totals = sets.by["day"]
    days = []
    day = start
    while day < end:
        total = totals.get(day)
        days.append((day, total.cost if total else ZERO))
        day += timedelta(days=1)
    return days


def _top_members(sets: _SpendSets, limit: int = TOP) -> list[MemberSpend]:
    top = sorted(sets.by["membership_id"].items(), key=lambda item: -item[1].cost)[:limit]
    members = {
        m.id: m
        for m in Membership.objects.filter(id__in=[k for k, _ in top if k]).select_related("user", "organization")
    }
    rows = []
    for membership_id, total in top:
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


def _report(sets: _SpendSets, start: date, end: date) -> SpendReport:
    by_organization = _by_organization(sets)
    return SpendReport(
        start=start,
        end=end,
        total_cost=sum((r.cost for r in by_organization), ZERO),
        total_calls=sum(r.calls for r in by_organization),
        by_organization=by_organization,
        by_model=_by_model(sets),
        by_day=_by_day(sets, start, end),
    )


def spend_report(*, start: date, end: date) -> SpendReport:
    """Spend of the whole platform on days in [start, end): per organization (highest first), per
    model, and per day (zero for days without spend)."""
    return _report(_spend_sets(start=start, end=end), start, end)


def top_members(*, start: date, end: date, limit: int = TOP) -> list[MemberSpend]:
    """The members who spent most on days in [start, end), across every organization."""
    return _top_members(_spend_sets(start=start, end=end), limit)


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
    sets = _spend_sets(start=start, end=end)
    period_sets = sets if (start, end) == (this_period, period_stop) else _spend_sets(start=this_period, end=period_stop)
    return Console(
        start=start,
        end=end,
        period_start=this_period,
        spend=_report(sets, start, end),
        top_organizations=_by_organization(period_sets)[:TOP],
        top_members=_top_members(period_sets),
        budgets=budgets_near_or_over(at=at),
        calls=call_log_stats(start=start, end=end),
        failures=call_log_failures(limit=20),
        streams=active_streams(),
    )
