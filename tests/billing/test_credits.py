"""Credits and refunds: compensating ledger rows that budgets, the usage page and the CSV account for."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from unittest import mock

import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts.models import AuditEvent
from billing.budgets import organization_budget_set
from billing.credits import ledger_credit
from billing.errors import BudgetExceeded
from billing.models import DailyUsage, LedgerEntry, LedgerKind, PeriodSpend
from billing.periods import period_start, period_start_datetime
from billing.selectors import budget_statuses, usage_report
from billing.usage import usage_rollup

from .conftest import authorize, fresh, settle
from .test_usage_page import NOW, seed_month

NOVEMBER = (date(2026, 11, 1), date(2026, 12, 1))


def org_counter(organization, at=None) -> PeriodSpend:
    start = period_start(at or timezone.now())
    return PeriodSpend.objects.get(organization=organization, membership__isnull=True, period_start=start)


def ledger_sum(organization, since: datetime) -> Decimal:
    return LedgerEntry.objects.filter(organization=organization, created_at__gte=since).aggregate(s=Sum("cost"))["s"]


def snapshot(organization) -> list[tuple]:
    return list(
        LedgerEntry.objects.filter(organization=organization)
        .order_by("request_id")
        .values_list("id", "request_id", "model", "cost", "kind", "note", "created_at")
    )


def read_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def staff(user_factory):
    return user_factory(is_staff=True, is_superuser=True)


@pytest.mark.django_db
def test_a_credit_is_a_new_row_and_the_counter_keeps_equal_to_the_ledger(org_a, org_b, test_model, staff):
    for member in (org_a.member, org_a.admin):
        settle(authorize(member), member)  # $0.003 each
    settle(authorize(org_b.member), org_b.member)
    before = snapshot(org_a.organization)
    member_spent = PeriodSpend.objects.get(membership=org_a.member).spent

    credit = ledger_credit(
        organization=org_a.organization, amount=Decimal("0.004"), reason="Slow answers", staff_user=staff
    )

    assert credit.cost == Decimal("-0.004") and credit.kind == LedgerKind.CREDIT and credit.note == "Slow answers"
    assert credit.model == "" and credit.membership_id is None and credit.request_id.startswith("credit:")
    assert credit.input_tokens == credit.output_tokens == 0
    month = period_start_datetime(timezone.now())
    counter = org_counter(org_a.organization)
    assert counter.spent == Decimal("0.002") == ledger_sum(org_a.organization, month)
    # Old rows never change; the member's own counter and the other tenant's do not move.
    assert [row for row in snapshot(org_a.organization) if row[0] != credit.id] == before
    assert PeriodSpend.objects.get(membership=org_a.member).spent == member_spent
    assert org_counter(org_b.organization).spent == Decimal("0.003") == ledger_sum(org_b.organization, month)
    statuses = budget_statuses(membership=fresh(org_a.owner))
    assert statuses[0].spent == Decimal("0.002")

    # More credit than the period's spend: the counter goes below zero, as the ledger sums.
    ledger_credit(
        organization=org_a.organization, amount=Decimal("1"), reason="Goodwill", kind="refund", staff_user=staff
    )
    assert org_counter(org_a.organization).spent == Decimal("-0.998") == ledger_sum(org_a.organization, month)


@pytest.mark.django_db
def test_a_credit_to_an_organization_without_a_counter_this_month_creates_it(org_a, staff):
    assert not PeriodSpend.objects.filter(organization=org_a.organization).exists()
    ledger_credit(organization=org_a.organization, amount=Decimal("2.5"), reason="Prepaid", staff_user=staff)
    assert org_counter(org_a.organization).spent == Decimal("-2.5")


@pytest.mark.django_db
def test_a_refused_budget_accepts_a_turn_after_a_credit_makes_room(org_a, test_model, staff):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.004"))
    settle(authorize(org_a.member), org_a.member)  # $0.003 of $0.004
    with pytest.raises(BudgetExceeded):
        authorize(org_a.member)  # may cost $0.003: $0.001 left
    ledger_credit(organization=org_a.organization, amount=Decimal("0.002"), reason="Refund of a failed answer",
                  kind="refund", staff_user=staff)  # fmt: skip
    auth = authorize(org_a.member)  # $0.001 spent + $0.003 reserved fits $0.004
    counter = org_counter(org_a.organization)
    assert counter.spent == Decimal("0.001") and counter.reserved == Decimal("0.003")
    settle(auth, org_a.member)
    assert org_counter(org_a.organization).spent == Decimal("0.004")
    with pytest.raises(BudgetExceeded):
        authorize(org_a.member)


def _credit_on(organization, at: datetime, amount: str, reason: str, staff, kind="credit") -> LedgerEntry:
    with mock.patch("django.utils.timezone.now", return_value=at):
        return ledger_credit(
            organization=organization, amount=Decimal(amount), reason=reason, kind=kind, staff_user=staff
        )


@pytest.mark.django_db
@pytest.mark.parametrize("rolled_through", [None, date(2026, 11, 5), date(2026, 11, 20), date(2026, 11, 28)])
def test_report_and_rollup_count_credits_once_and_never_as_a_model(org_a, org_b, staff, rolled_through):
    entries = seed_month(org_a, seed=11, rows=120)
    seed_month(org_b, seed=12, rows=60)
    credit = _credit_on(org_a.organization, datetime(2026, 11, 10, 9, tzinfo=UTC), "1.25", "Outage on 9 Nov", staff)
    refund = _credit_on(
        org_a.organization, datetime(2026, 11, 22, 9, tzinfo=UTC), "0.5", "Double charge", staff, "refund"
    )
    _credit_on(org_b.organization, datetime(2026, 11, 10, 9, tzinfo=UTC), "9", "Other tenant", staff)
    if rolled_through:
        usage_rollup(through=rolled_through)
        rolled = DailyUsage.objects.filter(organization=org_a.organization)
        assert rolled.aggregate(s=Sum("cost"))["s"] == ledger_sum_before(org_a.organization, rolled_through)
        for row in rolled.filter(model=""):
            assert row.calls == 0 and row.membership_id is None  # credits: no calls, no member
    usage = sum(e.cost for e in entries)
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        report = usage_report(organization=org_a.organization, start=NOVEMBER[0], end=NOVEMBER[1])
    assert (
        report.total_cost
        == usage - Decimal("1.75")
        == ledger_sum(org_a.organization, datetime(2026, 11, 1, tzinfo=UTC))
    )
    assert [(line.id, line.kind, line.label, line.amount) for line in report.credits] == [
        (credit.id, "credit", "Credit: Outage on 9 Nov", Decimal("-1.25")),
        (refund.id, "refund", "Refund: Double charge", Decimal("-0.5")),
    ]
    assert report.usage_cost == usage and report.credits_cost == Decimal("-1.75")
    assert "" not in {model for model, *_ in report.by_model}
    assert report.total_calls == len(entries)
    assert None not in dict(report.by_member)
    assert sum(cost for _, cost in report.by_day) == usage
    # A member's own report has none of the organization's credits.
    mine = usage_report(organization=org_a.organization, start=NOVEMBER[0], end=NOVEMBER[1], membership=org_a.member)
    assert mine.credits == [] and mine.total_cost == sum(e.cost for e in entries if e.membership_id == org_a.member.id)


def ledger_sum_before(organization, day: date) -> Decimal:
    return LedgerEntry.objects.filter(
        organization=organization, created_at__lt=datetime(day.year, day.month, day.day, tzinfo=UTC)
    ).aggregate(s=Sum("cost"))["s"]


@pytest.mark.django_db
def test_usage_page_and_csv_show_the_credit(client, org_a, staff):
    entries = seed_month(org_a, seed=21, rows=60)
    credit = _credit_on(org_a.organization, datetime(2026, 11, 12, 8, tzinfo=UTC), "3", "Outage on 11 Nov", staff)
    usage_rollup(through=date(2026, 11, 20))
    client.force_login(org_a.owner.user)
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        response = client.get("/usage/")
    html = response.content.decode()
    total = sum(e.cost for e in entries) - 3
    assert response.context["report"].total_cost == total
    assert f'data-value="{total}"' in html or f"${total.quantize(Decimal('0.01'))}" in html
    assert "Credit: Outage on 11 Nov" in html and "-$3.00" in html
    assert f'data-credit="{credit.id}"' in html
    assert 'data-model=""' not in html  # no bogus model row

    rows = read_csv(client.get("/usage/export.csv?start=2026-11-01&end=2026-11-28"))
    [line] = [r for r in rows if r["kind"] == "credit"]
    assert line["request_id"] == credit.request_id and line["note"] == "Outage on 11 Nov"
    assert line["cost_usd"] == "-3.000000000000" and line["model"] == "" and line["member"] == ""
    assert sum(Decimal(r["cost_usd"]) for r in rows) == total
    assert {r["kind"] for r in rows} == {"usage", "credit"}

    # A plain member sees their own usage: neither the credit line nor its row.
    client.force_login(org_a.member.user)
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        member_page = client.get("/usage/").content.decode()
    assert "Outage on 11 Nov" not in member_page
    assert not [
        r for r in read_csv(client.get("/usage/export.csv?start=2026-11-01&end=2026-11-28")) if r["kind"] != "usage"
    ]


@pytest.mark.django_db
def test_a_reason_that_looks_like_a_formula_is_written_as_text(client, org_a, staff):
    _credit_on(org_a.organization, datetime(2026, 11, 12, 8, tzinfo=UTC), "1", '=HYPERLINK("x")', staff)
    client.force_login(org_a.owner.user)
    [row] = read_csv(client.get("/usage/export.csv?start=2026-11-12&end=2026-11-12"))
    assert row["note"] == '\'=HYPERLINK("x")'


@pytest.mark.django_db
def test_the_api_spend_includes_credits(client, org_a, test_model, staff, api_key_factory):
    settle(authorize(org_a.member), org_a.member)
    ledger_credit(organization=org_a.organization, amount=Decimal("0.001"), reason="Test", staff_user=staff)
    _, secret = api_key_factory(org_a.owner)
    body = client.get("/api/v1/usage/", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert Decimal(body["spent"]) == Decimal("0.002") == org_counter(org_a.organization).spent
    assert Decimal(body["budgets"][0]["spent"]) == Decimal("0.002")
    assert [m["model"] for m in body["by_model"]] == ["test-model"]


# --- the staff form ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_grant_a_credit_from_the_ledger_admin(client, org_a, staff):
    client.force_login(staff)
    changelist = client.get("/admin/billing/ledgerentry/").content.decode()
    assert "/admin/billing/ledgerentry/grant-credit/" in changelist and "Grant credit or refund" in changelist
    form = client.get(f"/admin/billing/ledgerentry/grant-credit/?organization={org_a.organization.slug}")
    assert form.status_code == 200 and org_a.organization.slug in form.content.decode()

    refused = client.post(
        "/admin/billing/ledgerentry/grant-credit/",
        {"organization": org_a.organization.slug, "amount": "0", "kind": "credit", "reason": "nothing"},
    )
    assert refused.status_code == 200 and "more than zero" in refused.content.decode()
    unknown = client.post(
        "/admin/billing/ledgerentry/grant-credit/",
        {"organization": "no-such-org", "amount": "1", "kind": "credit", "reason": "x"},
    )
    assert unknown.status_code == 200 and "No organization has that slug" in unknown.content.decode()
    assert not LedgerEntry.objects.exists() and not AuditEvent.objects.filter(action__startswith="ledger.").exists()

    response = client.post(
        "/admin/billing/ledgerentry/grant-credit/",
        {"organization": org_a.organization.slug, "amount": "12.50", "kind": "refund", "reason": "Billing error"},
        HTTP_USER_AGENT="staff-browser",
    )
    assert response.status_code == 302 and response["Location"].endswith("/admin/billing/ledgerentry/")
    entry = LedgerEntry.objects.get()
    assert (entry.kind, entry.cost, entry.note) == ("refund", Decimal("-12.50"), "Billing error")
    event = AuditEvent.objects.get(action="ledger.refund")
    assert event.actor_user_id == staff.id and event.user_agent == "staff-browser"
    assert event.organization_id == org_a.organization.id and event.target_id == str(entry.id)
    listing = client.get("/admin/billing/ledgerentry/").content.decode()
    assert "Billing error" in listing and "Refund" in listing
    # Still read-only: no edit, no delete of any row.
    assert client.get(f"/admin/billing/ledgerentry/{entry.pk}/change/").status_code in (200, 403)
    assert client.post(f"/admin/billing/ledgerentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert LedgerEntry.objects.get().cost == Decimal("-12.50")


@pytest.mark.django_db
def test_staff_without_the_permission_cannot_grant(client, user_factory, org_a):
    from django.contrib.auth.models import Permission

    viewer = user_factory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_ledgerentry"))
    client.force_login(viewer)
    changelist = client.get("/admin/billing/ledgerentry/")
    assert changelist.status_code == 200 and "grant-credit" not in changelist.content.decode()
    assert client.get("/admin/billing/ledgerentry/grant-credit/").status_code == 403
    response = client.post(
        "/admin/billing/ledgerentry/grant-credit/",
        {"organization": org_a.organization.slug, "amount": "1", "kind": "credit", "reason": "x"},
    )
    assert response.status_code == 403 and not LedgerEntry.objects.exists()
