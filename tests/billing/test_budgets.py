from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.core import mail

from billing.alerts import budget_alerts_sweep
from billing.budgets import member_budget_set, organization_budget_set
from billing.errors import BudgetExceeded, MessageTooLong, ModelNotAllowed
from billing.models import PeriodSpend

from .conftest import authorize, fresh, settle, usage_for


def at(when: datetime):
    return mock.patch("django.utils.timezone.now", return_value=when)


@pytest.mark.django_db
def test_tier_rules(org_a, test_model):
    with pytest.raises(ModelNotAllowed) as refused:
        authorize(org_a.member, model="no-such-model")
    assert refused.value.code == "model_not_allowed"
    tier = org_a.organization.tier
    with pytest.raises(MessageTooLong) as too_long:
        authorize(org_a.member, longest_message_chars=tier.max_message_chars + 1)
    assert too_long.value.code == "message_too_long"
    auth = authorize(org_a.member, max_output_tokens=10**9)
    assert auth.max_output_tokens == tier.max_output_tokens
    assert authorize(org_a.member, max_output_tokens=50).max_output_tokens == 50
    assert authorize(org_a.member, max_output_tokens=None).max_output_tokens == tier.max_output_tokens


@pytest.mark.django_db
def test_the_plan_limits_the_longest_message_of_the_whole_prompt_and_says_so(org_a, test_model):
    tier = org_a.organization.tier
    authorize(org_a.member, longest_message_chars=tier.max_message_chars)  # at the limit: fine
    with pytest.raises(MessageTooLong) as too_long:
        authorize(org_a.member, longest_message_chars=200_000)
    assert too_long.value.message == (
        f"A message of this request is 200000 characters long; the {tier.name} plan allows at most "
        f"{tier.max_message_chars} characters per message (system message and tools included)."
    )


@pytest.mark.django_db
def test_free_tier_does_not_allow_pro_models(member_factory, test_model):
    member = member_factory()  # a new organization on the free tier
    with pytest.raises(ModelNotAllowed):
        authorize(member, model="claude-sonnet-4-5")


@pytest.mark.django_db
def test_budget_refuses_when_worst_case_does_not_fit_and_says_when_it_resets(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.006"))
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    with at(now):
        authorize(org_a.member)
        authorize(org_a.admin)
        with pytest.raises(BudgetExceeded) as refused:
            authorize(org_a.owner)
    assert refused.value.code == "budget_exceeded"
    assert "2026-12-01" in refused.value.message
    assert refused.value.retry_after == (datetime(2026, 12, 1, tzinfo=UTC) - now).total_seconds()


@pytest.mark.django_db
def test_member_budget_applies_to_that_member_only(org_a, test_model):
    member_budget_set(actor=fresh(org_a.admin), member=org_a.member, monthly_limit_usd=Decimal("0.003"))
    auth = authorize(org_a.member)
    with pytest.raises(BudgetExceeded) as refused:
        authorize(org_a.member)
    assert "Your monthly budget" in refused.value.message
    authorize(org_a.admin)  # the organization's budget still has room
    settle(auth, org_a.member, [usage_for(auth, output_tokens=0)])  # real cost $0.001
    authorize(org_a.member, max_output_tokens=500)  # $0.002 now fits in the $0.002 left


@pytest.mark.django_db
def test_only_admins_set_member_budgets(org_a, org_b, test_model):
    from accounts.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        member_budget_set(actor=fresh(org_a.member), member=org_a.admin, monthly_limit_usd=Decimal(1))
    with pytest.raises(PermissionDenied):
        member_budget_set(actor=fresh(org_a.admin), member=org_b.member, monthly_limit_usd=Decimal(1))


@pytest.mark.django_db
def test_period_boundary_resets_spend(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.003"))
    with at(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)):
        auth = authorize(org_a.member)
        settle(auth, org_a.member)
        with pytest.raises(BudgetExceeded):
            authorize(org_a.member)
    with at(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)):
        authorize(org_a.member)
    periods = dict(
        PeriodSpend.objects.filter(organization=org_a.organization, membership__isnull=True).values_list(
            "period_start", "spent"
        )
    )
    assert periods[datetime(2026, 11, 1).date()] == Decimal("0.003")
    assert periods[datetime(2026, 12, 1).date()] == 0


@pytest.mark.django_db
def test_reservation_made_last_month_is_released_from_last_month(org_a, test_model):
    with at(datetime(2026, 11, 30, 23, 59, 50, tzinfo=UTC)):
        auth = authorize(org_a.member)
    with at(datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)):
        settle(auth, org_a.member)
    rows = {
        p.period_start.month: p
        for p in PeriodSpend.objects.filter(organization=org_a.organization, membership__isnull=True)
    }
    assert rows[11].reserved == 0 and rows[11].spent == 0
    assert rows[12].spent == Decimal("0.003") and rows[12].reserved == 0


@pytest.mark.django_db
def test_thresholds_alert_once_per_period(org_a, test_model, django_capture_on_commit_callbacks):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.010"))
    recipients = {org_a.owner.user.email, org_a.admin.user.email}

    def spend(output_tokens: int, when: datetime):
        with at(when), django_capture_on_commit_callbacks(execute=True):
            auth = authorize(org_a.member, prompt_tokens=0, max_output_tokens=output_tokens)
            settle(auth, org_a.member, [usage_for(auth, input_tokens=0, output_tokens=output_tokens)])

    november = datetime(2026, 11, 10, tzinfo=UTC)
    spend(3500, november)  # $0.007: 70 %
    assert mail.outbox == []
    spend(500, november)  # 80 %
    assert len(mail.outbox) == 1 and "75%" in mail.outbox[0].subject
    assert set(mail.outbox[0].to) == recipients
    spend(250, november)  # 85 %: no new alert
    assert len(mail.outbox) == 1
    spend(300, november)  # 91 %
    assert len(mail.outbox) == 2 and "90%" in mail.outbox[1].subject
    spend(100, november)
    with at(november):
        assert budget_alerts_sweep(now=november) == []
    assert len(mail.outbox) == 2
    december = datetime(2026, 12, 2, tzinfo=UTC)
    spend(4000, december)  # straight to 80 % of the new period
    assert len(mail.outbox) == 3 and "75%" in mail.outbox[2].subject


@pytest.mark.django_db
def test_member_budget_alert_reaches_the_member_too(org_a, test_model, django_capture_on_commit_callbacks):
    member_budget_set(actor=fresh(org_a.owner), member=org_a.member, monthly_limit_usd=Decimal("0.001"))
    with django_capture_on_commit_callbacks(execute=True):
        auth = authorize(org_a.member, prompt_tokens=0, max_output_tokens=500)
        settle(auth, org_a.member, [usage_for(auth, input_tokens=0, output_tokens=480)])
    assert len(mail.outbox) == 1 and "90%" in mail.outbox[0].subject
    assert org_a.member.user.email in mail.outbox[0].to


@pytest.mark.django_db
def test_sweep_sends_alerts_settle_did_not(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.004"))
    auth = authorize(org_a.member)
    settle(auth, org_a.member)  # on_commit callbacks are not run in this test transaction
    assert mail.outbox == []
    sent = budget_alerts_sweep()
    assert [threshold for _, threshold in sent] == [75]
    assert budget_alerts_sweep() == []


@pytest.mark.django_db
def test_spent_budget_refuses_everything_until_reset(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.003"))
    auth = authorize(org_a.member)
    settle(auth, org_a.member)
    with pytest.raises(BudgetExceeded) as refused:
        authorize(org_a.member, prompt_tokens=1, max_output_tokens=1)
    assert "used up" in refused.value.message
    assert refused.value.retry_after > 0
    _ = timedelta


@pytest.mark.django_db
def test_a_used_up_budget_refuses_free_models_too(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.003"))
    authorize(org_a.member, model="demo")  # free, and the budget has room
    auth = authorize(org_a.member)
    settle(auth, org_a.member)
    with pytest.raises(BudgetExceeded):
        authorize(org_a.member, model="demo")


# --- money in refusals ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_refusal_shows_small_amounts_as_they_are(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.0001"))
    authorize(org_a.member, prompt_tokens=30, max_output_tokens=30)  # may cost $0.00009: $0.00001 left
    with pytest.raises(BudgetExceeded) as refused:
        authorize(org_a.member, prompt_tokens=4, max_output_tokens=4)  # may cost $0.000012
    assert refused.value.message.startswith(
        "The organization's monthly budget of $0.0001 has $0.00001 left, "
        "less than this message may cost ($0.000012); it resets on "
    )


@pytest.mark.django_db
def test_a_refusal_says_used_up_when_nothing_is_left(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.0001"))
    auth = authorize(org_a.member, prompt_tokens=98, max_output_tokens=1)  # holds the whole budget
    with pytest.raises(BudgetExceeded) as refused:
        authorize(org_a.member, prompt_tokens=4, max_output_tokens=4)
    assert refused.value.message.startswith(
        "The organization's monthly budget of $0.0001 is used up by the messages being answered now; it resets on "
    )
    settle(auth, org_a.member, [usage_for(auth, input_tokens=98, output_tokens=1)])
    with pytest.raises(BudgetExceeded) as refused:
        authorize(org_a.member, prompt_tokens=1, max_output_tokens=1)
    assert refused.value.message.startswith("The organization's monthly budget of $0.0001 is used up; it resets on ")


@pytest.mark.django_db
def test_a_refusal_keeps_cents_for_normal_amounts(org_a, test_model):
    member_budget_set(actor=fresh(org_a.owner), member=org_a.member, monthly_limit_usd=Decimal("1.50"))
    authorize(org_a.member, prompt_tokens=1_000_000, max_output_tokens=1000)  # may cost $1.002
    with pytest.raises(BudgetExceeded) as refused:
        authorize(org_a.member, prompt_tokens=1_000_000, max_output_tokens=1000)
    # What is left is never shown larger than it is, what it may cost never smaller.
    assert refused.value.message.startswith(
        "Your monthly budget of $1.50 has $0.49 left, less than this message may cost ($1.01); it resets on "
    )


def test_money_reads_in_cents_or_two_significant_digits():
    from billing.money import usd, usd_cost, usd_left

    assert [usd(Decimal(v)) for v in ("0", "12.345", "100", "0.25", "0.5", "0.006", "0.0015", "0.0000124")] == [
        "$0.00", "$12.34", "$100.00", "$0.25", "$0.50", "$0.006", "$0.0015", "$0.000012",
    ]  # fmt: skip
    assert usd_left(Decimal("0.0000129")) == "$0.000012" and usd_cost(Decimal("0.0000121")) == "$0.000013"
    assert usd_left(Decimal("0.9999")) == "$0.99" and usd_cost(Decimal("1.001")) == "$1.01"
