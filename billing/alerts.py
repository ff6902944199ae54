"""Budget threshold alerts: at 75 % and 90 % of a budget, one e-mail per counter (so once per period).

Settlement asks for a check when a cost takes a counter past a threshold it had not reached
(`crosses`); a periodic sweep catches what a lost commit hook missed. The e-mail itself is sent by
the Celery task `billing.budget_alert_send`, enqueued by name after commit, so this module never
imports billing.tasks (which imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from celery import current_app
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Membership
from billing.models import Budget, PeriodSpend
from billing.money import usd
from billing.periods import period_end, period_start
from billing.selectors import organization_budget_limit

THRESHOLDS = (75, 90)
ALERT_TASK = "billing.budget_alert_send"


@dataclass(frozen=True)
class BudgetWatch:
    """A budget counter as the turn found it, to tell at settlement whether it crossed an alert threshold."""

    counter_id: int
    spent: Decimal
    limit: Decimal
    alerted_up_to: int  # the highest threshold already alerted this period (0 for none)


def alerted_up_to(counter: PeriodSpend) -> int:
    return 90 if counter.alerted_90_at else 75 if counter.alerted_75_at else 0


def crosses(watch: BudgetWatch, cost: Decimal) -> bool:
    """Whether this cost takes the counter past an alert threshold not yet alerted (as the turn found it)."""
    percent = (watch.spent + cost) * 100 / watch.limit
    return any(percent >= threshold > watch.alerted_up_to for threshold in THRESHOLDS)


def _counter_limit(counter: PeriodSpend) -> Decimal | None:
    if counter.membership_id is None:
        return organization_budget_limit(organization=counter.organization)
    own = Budget.objects.filter(organization_id=counter.organization_id, membership_id=counter.membership_id).first()
    return own.monthly_limit_usd if own else None


def budget_alerts_check(*, counter_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Send the 75 % / 90 % alerts a counter has crossed, once per counter (so once per period).

    Returns (counter id, threshold) of the alerts sent. A counter that jumps past both at once
    gets one e-mail (the 90 % one) and both marked.
    """
    sent = []
    now = timezone.now()
    for counter in PeriodSpend.objects.filter(id__in=counter_ids).select_related("organization__tier"):
        limit = _counter_limit(counter)
        if not limit or limit <= 0:
            continue
        percent = counter.spent * 100 / limit
        crossed = [t for t in THRESHOLDS if percent >= t]
        if not crossed:
            continue
        newly = []
        for threshold in crossed:
            field = f"alerted_{threshold}_at"
            if PeriodSpend.objects.filter(id=counter.id, **{f"{field}__isnull": True}).update(**{field: now}):
                newly.append(threshold)
        if newly:
            threshold = max(newly)
            sent.append((counter.id, threshold))
            # robust: a broker outage loses an e-mail (the banner still shows), never a settlement.
            transaction.on_commit(lambda cid=counter.id, t=threshold: _alert_enqueue(cid, t), robust=True)
    return sent


def _alert_enqueue(counter_id: int, threshold: int) -> None:
    # By name: billing.tasks imports this module, not the other way round. (`delay`, unlike
    # `send_task`, also runs the task in place under CELERY_TASK_ALWAYS_EAGER.)
    current_app.tasks[ALERT_TASK].delay(counter_id, threshold)


def budget_alerts_sweep(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """Send any threshold alert not sent yet for this period's counters (a safety net for settlement)."""
    now = now or timezone.now()
    ids = list(
        PeriodSpend.objects.filter(period_start=period_start(now), spent__gt=0)
        .filter(Q(alerted_75_at__isnull=True) | Q(alerted_90_at__isnull=True))
        .values_list("id", flat=True)
    )
    return budget_alerts_check(counter_ids=ids)


def budget_alert_email(*, counter_id: int, threshold: int) -> int:
    """E-mail the organization's owners and admins (and the member, for a member budget)."""
    counter = PeriodSpend.objects.select_related("organization__tier", "membership__user").filter(id=counter_id).first()
    if counter is None:
        return 0
    limit = _counter_limit(counter)
    if limit is None:
        return 0
    organization = counter.organization
    recipients = set(
        Membership.objects.filter(organization=organization, role__in=["owner", "admin"]).values_list(
            "user__email", flat=True
        )
    )
    if counter.membership_id is not None:
        recipients.add(counter.membership.user.email)
        whose = f"{counter.membership.user.email}'s monthly budget in {organization.name}"
    else:
        whose = f"{organization.name}'s monthly budget"
    start = counter.period_start
    resets = period_end(datetime(start.year, start.month, start.day, tzinfo=UTC))
    subject = f"Parley: {whose} is {threshold}% used"
    body = (
        f"{whose} has reached {threshold}% ({usd(counter.spent)} of {usd(limit)}) for "
        f"{start:%B %Y}.\n\nAt 100% new messages are refused until the budget resets on "
        f"{resets:%Y-%m-%d} at 00:00 UTC.\n"
    )
    return send_mail(subject, body, None, sorted(recipients))
