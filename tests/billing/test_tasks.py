from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.conf import settings
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from billing import tasks
from billing.budgets import organization_budget_set
from billing.models import DailyUsage, LedgerEntry, RollupState

from .conftest import authorize, settle


def test_beat_schedule_has_the_billing_tasks():
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"billing.reservations_release_expired", "billing.budget_alerts_sweep", "billing.usage_rollup"} <= names


@pytest.mark.django_db
def test_rollup_task_summarises_finished_days(org_a, test_model):
    auth = authorize(org_a.member)
    settle(auth, org_a.member)
    yesterday = timezone.now() - timedelta(days=1)
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                organization=org_a.organization, membership=org_a.member, request_id="old-call", model="test-model",
                input_per_mtok=1, output_per_mtok=2, cached_input_per_mtok=1, cost=Decimal("0.5"), created_at=yesterday,
            )
        ]
    )  # fmt: skip
    tasks.usage_rollup.delay().get()
    assert RollupState.objects.get(pk=1).rolled_through == timezone.now().astimezone(UTC).date()
    rows = list(DailyUsage.objects.filter(organization=org_a.organization))
    assert [(r.day, r.cost, r.calls) for r in rows] == [(yesterday.astimezone(UTC).date(), Decimal("0.5"), 1)]


@pytest.mark.django_db
def test_alert_sweep_task_sends_the_email(org_a, test_model, django_capture_on_commit_callbacks):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.003"))
    auth = authorize(org_a.member)
    settle(auth, org_a.member)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.budget_alerts_sweep.delay().get() == 1
    assert len(mail.outbox) == 1 and "90%" in mail.outbox[0].subject
    assert "resets on" in mail.outbox[0].body
    assert "has reached 90% ($0.003 of $0.003)" in mail.outbox[0].body  # not $0.0030


@pytest.mark.django_db
def test_prices_load_command_adds_only_missing_rows():
    out = StringIO()
    call_command("billing_prices_load", stdout=out)
    assert out.getvalue().startswith("0 price rows added")


def test_periods_are_calendar_months_in_utc():
    from billing.periods import period_end, period_start

    assert period_start(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)).isoformat() == "2026-12-01"
    assert period_end(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    # 1 January 00:30 in UTC+2 is still 31 December in UTC.
    from datetime import timezone as tz

    assert period_start(datetime(2027, 1, 1, 0, 30, tzinfo=tz(timedelta(hours=2)))).isoformat() == "2026-12-01"
