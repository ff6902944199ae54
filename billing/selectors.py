"""Reads of billing data, scoped to an organization (and a member where roles matter)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Membership, Organization, Tier
from billing.credits import CREDIT_KINDS, CREDIT_MODEL
from billing.models import Budget, DailyUsage, LedgerEntry, LedgerKind, PeriodSpend, Price, RollupState
from billing.money import usd
from billing.periods import period_end, period_start

ZERO = Decimal(0)


_PRICES_TTL = 30.0
_prices: dict[str, tuple[float, list[Price]]] = {}


def price_for(model: str, at: datetime | None = None) -> Price | None:
    """The price of a model in effect at `at` (now by default), or None: then the model cannot be used.

    Every turn reads it twice, so a model's price rows are kept for 30 s per process; saving or
    deleting a price forgets them here at once (other processes within the 30 s).
    """
    at = at or timezone.now()
    now = time.monotonic()
    cached = _prices.get(model)
    if cached is None or cached[0] < now:
        cached = (now + _PRICES_TTL, list(Price.objects.filter(model=model).order_by("-effective_at")))
        _prices[model] = cached
    return next((price for price in cached[1] if price.effective_at <= at), None)


def prices_forget(**_) -> None:
    _prices.clear()


def models_billable(*, tier: Tier, aliases: Sequence[str], at: datetime | None = None) -> list[str]:
    """The aliases that may serve a call on this plan: the primary (`aliases[0]`) first, then each
    fallback the plan includes and that has a price in effect at `at`, in order, each once.

    The primary is kept whatever it is: turn_authorize refuses it with the precise error.
    """
    if not aliases:
        return []
    at = at or timezone.now()
    primary = aliases[0]
    billable = [primary]
    for alias in aliases[1:]:
        if alias not in billable and tier.allows_model(alias) and price_for(alias, at) is not None:
            billable.append(alias)
    return billable


def prices_current() -> list[Price]:
    now = timezone.now()
    latest: dict[str, Price] = {}
    for price in Price.objects.filter(effective_at__lte=now).order_by("model", "-effective_at"):
        latest.setdefault(price.model, price)
    return list(latest.values())


def organization_budget_limit(*, organization: Organization) -> Decimal:
    """The organization's monthly budget: a staff override, else its tier's."""
    override = Budget.objects.filter(organization=organization, membership__isnull=True).first()
    return override.monthly_limit_usd if override else organization.tier.monthly_budget_usd


def member_budget_limits(*, organization: Organization) -> dict[UUID, Decimal]:
    return dict(
        Budget.objects.filter(organization=organization, membership__isnull=False).values_list(
            "membership_id", "monthly_limit_usd"
        )
    )


@dataclass(frozen=True)
class BudgetStatus:
    scope: str  # "organization" or "member"
    label: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    resets_at: datetime
    membership_id: UUID | None = None

    @property
    def percent(self) -> int:
        if self.limit <= 0:
            return 100
        return int(min(Decimal(100), self.spent * 100 / self.limit))

    @property
    def remaining(self) -> Decimal:
        return max(ZERO, self.limit - self.spent - self.reserved)

    @property
    def level(self) -> str:
        percent = self.percent
        if percent >= 100:
            return "exceeded"
        if percent >= 90:
            return "danger"
        if percent >= 75:
            return "warning"
        return "ok"


def budget_statuses(*, membership: Membership, at: datetime | None = None) -> list[BudgetStatus]:
    """This period's budgets that apply to the member: the organization's, and the member's own if set."""
    at = at or timezone.now()
    organization = membership.organization
    start = period_start(at)
    resets = period_end(at)
    counters = {
        c.membership_id: c
        for c in PeriodSpend.objects.filter(organization=organization, period_start=start).filter(
            Q(membership__isnull=True) | Q(membership=membership)
        )
    }
    org_counter = counters.get(None)
    statuses = [
        BudgetStatus(
            scope="organization",
            label=f"{organization.name} this month",
            limit=organization_budget_limit(organization=organization),
            spent=org_counter.spent if org_counter else ZERO,
            reserved=org_counter.reserved if org_counter else ZERO,
            resets_at=resets,
        )
    ]
    own = Budget.objects.filter(organization=organization, membership=membership).first()
    if own is not None:
        mine = counters.get(membership.id)
        statuses.append(
            BudgetStatus(
                scope="member",
                label="Your own budget this month",
                limit=own.monthly_limit_usd,
                spent=mine.spent if mine else ZERO,
                reserved=mine.reserved if mine else ZERO,
                resets_at=resets,
                membership_id=membership.id,
            )
        )
    return statuses


def member_spend_this_period(*, organization: Organization, at: datetime | None = None) -> dict[UUID, Decimal]:
    at = at or timezone.now()
    return dict(
        PeriodSpend.objects.filter(
            organization=organization, period_start=period_start(at), membership__isnull=False
        ).values_list("membership_id", "spent")
    )


# --- usage reports: the daily summary for rolled-up days, the ledger for the rest -----------------


_PLACES = Decimal("1e-12")


def _exact(value: Decimal | float | None) -> Decimal:
    """A summed cost at the ledger's precision (SQLite sums decimals as floats; PostgreSQL exactly)."""
    return ZERO if value is None else Decimal(value).quantize(_PLACES)


def _rolled_through() -> date | None:
    state = RollupState.objects.filter(pk=1).first()
    return state.rolled_through if state else None


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class CreditLine:
    """A credit or refund granted by staff, as the usage pages list it."""

    id: UUID
    created_at: datetime
    kind: str  # LedgerKind.CREDIT or .REFUND
    reason: str
    amount: Decimal  # negative: what it takes off the spend (the ledger row's cost)

    @property
    def label(self) -> str:
        return f"{LedgerKind(self.kind).label}: {self.reason}"

    @property
    def shown(self) -> str:
        return usd(self.amount)  # "-$5.00"


@dataclass(frozen=True)
class UsageReport:
    start: date
    end: date  # exclusive
    total_cost: Decimal  # what was spent: usage plus credits and refunds (negative), as the ledger sums
    total_calls: int
    by_day: list[tuple[date, Decimal]]  # usage per day (credits are listed in `credits`)
    by_model: list[tuple[str, Decimal, int, int, int]]  # model, cost, calls, input, output (usage only)
    by_member: list[tuple[UUID | None, Decimal]]  # usage only (credits are the organization's)
    credits: list[CreditLine] = field(default_factory=list)  # oldest first

    @property
    def usage_cost(self) -> Decimal:
        return sum((cost for _, cost in self.by_day), ZERO)

    @property
    def credits_cost(self) -> Decimal:
        return sum((line.amount for line in self.credits), ZERO)

    @property
    def credits_shown(self) -> str:
        return usd(self.credits_cost)


def usage_report(
    *, organization: Organization, start: date, end: date, membership: Membership | None = None
) -> UsageReport:
    """Spend of an organization (or of one member in it) for days in [start, end).

    Days before the roll-up watermark come from DailyUsage (a few hundred rows a month whatever
    the ledger's size); later days are aggregated from the ledger, which holds at most a day or two.
    Credits and refunds (billing.credits) are read from the ledger with their reasons, only on the
    days whose summary says they have some; they count in `total_cost`, not per day, model or member.
    A member's own report has none: credits are the organization's.
    """
    rolled = _rolled_through()
    split = min(max(rolled, start), end) if rolled else start

    summary_all = DailyUsage.objects.filter(organization=organization, day__gte=start, day__lt=split)
    ledger_all = LedgerEntry.objects.for_organization(organization).filter(
        created_at__gte=_day_start(split), created_at__lt=_day_start(end)
    )
    if membership is not None:
        summary_all = summary_all.filter(membership=membership)
        ledger_all = ledger_all.filter(membership=membership)
    summary = summary_all.exclude(model=CREDIT_MODEL)
    ledger = ledger_all.filter(kind=LedgerKind.USAGE)

    by_day: dict[date, Decimal] = {}
    for day, cost in summary.values_list("day").annotate(c=Sum("cost")).values_list("day", "c"):
        by_day[day] = by_day.get(day, ZERO) + _exact(cost)
    for day, cost in (
        ledger.annotate(day=TruncDate("created_at", tzinfo=UTC)).values_list("day").annotate(c=Sum("cost")).order_by()
        .values_list("day", "c")
    ):
        by_day[day] = by_day.get(day, ZERO) + _exact(cost)

    by_model: dict[str, list] = {}
    for model, cost, calls, inp, out in (
        summary.values_list("model")
        .annotate(c=Sum("cost"), n=Sum("calls"), i=Sum("input_tokens"), o=Sum("output_tokens"))
        .values_list("model", "c", "n", "i", "o")
    ):
        by_model[model] = [_exact(cost), calls, inp, out]
    for model, cost, calls, inp, out in (
        ledger.values_list("model")
        .annotate(c=Sum("cost"), n=Count("id"), i=Sum("input_tokens"), o=Sum("output_tokens"))
        .order_by()
        .values_list("model", "c", "n", "i", "o")
    ):
        row = by_model.setdefault(model, [ZERO, 0, 0, 0])
        row[0] += _exact(cost)
        row[1] += calls
        row[2] += inp
        row[3] += out

    by_member: dict[UUID | None, Decimal] = {}
    if membership is None:
        for member_id, cost in summary.values_list("membership_id").annotate(c=Sum("cost")).values_list(
            "membership_id", "c"
        ):
            by_member[member_id] = by_member.get(member_id, ZERO) + _exact(cost)
        for member_id, cost in (
            ledger.values_list("membership_id").annotate(c=Sum("cost")).order_by().values_list("membership_id", "c")
        ):
            by_member[member_id] = by_member.get(member_id, ZERO) + _exact(cost)

    credits: list[CreditLine] = []
    if membership is None:  # a member's own report has none: credits are the organization's
        rolled_days = summary_all.filter(model=CREDIT_MODEL).values_list("day", flat=True).distinct()
        credits = _credit_lines(
            organization=organization,
            ranges=[(day, day + timedelta(days=1)) for day in rolled_days] + ([(split, end)] if split < end else []),
        )

    days = []
    day = start
    while day < end:
        days.append((day, by_day.get(day, ZERO)))
        day += timedelta(days=1)
    return UsageReport(
        start=start,
        end=end,
        total_cost=sum((cost for _, cost in days), ZERO) + sum((line.amount for line in credits), ZERO),
        total_calls=sum(row[1] for row in by_model.values()),
        by_day=days,
        by_model=sorted(
            ((m, r[0], r[1], r[2], r[3]) for m, r in by_model.items()), key=lambda row: (-row[1], row[0])
        ),
        by_member=sorted(by_member.items(), key=lambda row: -row[1]),
        credits=credits,
    )


def _credit_lines(*, organization: Organization, ranges: list[tuple[date, date]]) -> list[CreditLine]:
    """The credits of the days in `ranges` ([first, after) pairs): the report's ledger part, and the
    rolled-up days whose summary has some, so a month's credits cost a look at those days only."""
    if not ranges:
        return []
    when = Q()
    for first, after in ranges:
        when |= Q(created_at__gte=_day_start(first), created_at__lt=_day_start(after))
    rows = (
        LedgerEntry.objects.for_organization(organization)
        .filter(when, kind__in=CREDIT_KINDS)
        .order_by("created_at", "request_id")
        .values_list("id", "created_at", "kind", "note", "cost")
    )
    return [CreditLine(id=i, created_at=at, kind=kind, reason=note, amount=_exact(cost)) for i, at, kind, note, cost in rows]


def ledger_for_export(
    *, organization: Organization, start: date, end: date, membership: Membership | None = None
):
    """Ledger rows for days in [start, end), oldest first, as an iterator (for CSV streaming)."""
    rows = LedgerEntry.objects.for_organization(organization).filter(
        created_at__gte=_day_start(start), created_at__lt=_day_start(end)
    )
    if membership is not None:
        rows = rows.filter(membership=membership)
    return rows.select_related("api_key").order_by("created_at", "request_id").iterator(chunk_size=2000)
