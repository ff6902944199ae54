"""The usage page, its CSV export and member budgets: numbers equal the ledger, tenants never mix."""

import csv
import io
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from unittest import mock

import pytest
from django.template.loader import render_to_string

from billing.budgets import organization_budget_set
from billing.context_processors import budget_banner
from billing.models import Budget, DailyUsage, LedgerEntry
from billing.selectors import usage_report
from billing.usage import usage_rollup

from .conftest import authorize, fresh, settle

NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
MODELS = ["gpt-5.2-instant", "claude-sonnet-4-5", "gemini-3-flash"]


def seed_month(tenant, *, seed: int, rows: int = 400) -> list[LedgerEntry]:
    """A month of ledger rows (1 November to now), spread over the tenant's members and three models."""
    rng = random.Random(seed)
    members = [tenant.owner, tenant.admin, tenant.member]
    entries = []
    start = datetime(2026, 11, 1, tzinfo=UTC)
    span = (NOW - start).total_seconds()
    for n in range(rows):
        member = members[n % 3]
        entries.append(
            LedgerEntry(
                organization=tenant.organization,
                membership=member,
                user_email=member.user.email,
                request_id=f"seed-{seed}-{n}",
                model=MODELS[rng.randrange(3)],
                provider="test",
                input_tokens=rng.randrange(10, 5000),
                output_tokens=rng.randrange(10, 2000),
                input_per_mtok=Decimal("1"),
                output_per_mtok=Decimal("2"),
                cached_input_per_mtok=Decimal("1"),
                cost=Decimal(rng.randrange(1, 10**9)) / Decimal(10**10),  # up to $0.1, 10 decimals
                created_at=start + timedelta(seconds=rng.random() * span),
            )
        )
    # Two calls at the very edges of days, to catch off-by-one-day sums.
    for n, at in enumerate([datetime(2026, 11, 5, 0, 0, tzinfo=UTC), datetime(2026, 11, 5, 23, 59, 59, tzinfo=UTC)]):
        entries.append(
            LedgerEntry(
                organization=tenant.organization, membership=members[0], request_id=f"edge-{seed}-{n}",
                model=MODELS[0], input_per_mtok=1, output_per_mtok=2, cached_input_per_mtok=1,
                cost=Decimal("1.23"), created_at=at,
            )
        )  # fmt: skip
    LedgerEntry.objects.bulk_create(entries)
    return entries


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))


@pytest.fixture
def month(org_a, org_b):
    a = seed_month(org_a, seed=1)
    b = seed_month(org_b, seed=2)
    return a, b


def expected(entries, *, member=None):
    rows = [e for e in entries if member is None or e.membership_id == member.id]
    by_day, by_model, by_member = {}, {}, {}
    for e in rows:
        day = e.created_at.astimezone(UTC).date()
        by_day[day] = by_day.get(day, 0) + e.cost
        by_model[e.model] = by_model.get(e.model, 0) + e.cost
        by_member[e.membership_id] = by_member.get(e.membership_id, 0) + e.cost
    return sum(e.cost for e in rows), by_day, by_model, by_member


def check_report(report, entries, member=None):
    total, by_day, by_model, by_member = expected(entries, member=member)
    assert report.total_cost == total
    assert {d: c for d, c in report.by_day if c} == by_day
    assert {m: c for m, c, *_ in report.by_model} == by_model
    if member is None:
        assert dict(report.by_member) == by_member


@pytest.mark.django_db
@pytest.mark.parametrize("rolled_through", [None, date(2026, 11, 20), date(2026, 11, 28)])
def test_report_equals_the_ledger_whatever_is_rolled_up(org_a, month, rolled_through):
    if rolled_through:
        usage_rollup(through=rolled_through)
        assert DailyUsage.objects.exists()
    a, _ = month
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        report = usage_report(organization=org_a.organization, start=date(2026, 11, 1), end=date(2026, 12, 1))
        check_report(report, a)
        mine = usage_report(
            organization=org_a.organization, start=date(2026, 11, 1), end=date(2026, 12, 1), membership=org_a.member
        )
        check_report(mine, a, member=org_a.member)


@pytest.mark.django_db
def test_rollup_is_idempotent_and_moves_forward(org_a, month):
    usage_rollup(through=date(2026, 11, 10))
    first = DailyUsage.objects.count()
    assert usage_rollup(through=date(2026, 11, 10)) == 0
    assert DailyUsage.objects.count() == first
    usage_rollup(through=date(2026, 11, 28))
    assert sum(DailyUsage.objects.values_list("cost", flat=True)) == sum(
        LedgerEntry.objects.filter(created_at__lt=datetime(2026, 11, 28, tzinfo=UTC)).values_list("cost", flat=True)
    )


@pytest.mark.django_db
def test_usage_page_for_an_admin_shows_the_organization_and_nothing_of_another(client, org_a, org_b, month):
    a, b = month
    usage_rollup(through=date(2026, 11, 25))
    client.force_login(org_a.admin.user)
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        response = client.get("/usage/")
    assert response.status_code == 200
    report = response.context["report"]
    check_report(report, a)
    html = response.content.decode()
    total = sum(e.cost for e in a)
    assert f"${cents(total)}" in html
    _, _, by_model, by_member = expected(a)
    for model, cost in by_model.items():
        assert f"${cents(cost)}" in html, model
    for member in (org_a.owner, org_a.admin, org_a.member):
        assert member.user.email in html
        assert f"${cents(by_member[member.id])}" in html
    for member in (org_b.owner, org_b.admin, org_b.member):
        assert member.user.email not in html
    assert "<svg" in html and "<rect" in html
    assert "cdn" not in html.lower()


@pytest.mark.django_db
def test_usage_page_for_a_member_shows_their_own_usage(client, org_a, month):
    a, _ = month
    client.force_login(org_a.member.user)
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        response = client.get("/usage/")
    assert response.status_code == 200
    check_report(response.context["report"], a, member=org_a.member)
    html = response.content.decode()
    assert org_a.admin.user.email not in html  # no per-member table for plain members
    assert "members" not in response.context or not response.context["members"]


@pytest.mark.django_db
def test_budget_progress_bar_shows_this_period(client, org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.01"))
    auth = authorize(org_a.member)
    settle(auth, org_a.member)  # $0.003: 30 %
    client.force_login(org_a.member.user)
    response = client.get("/usage/")
    budgets = response.context["budgets"]
    assert budgets[0].spent == Decimal("0.003") and budgets[0].percent == 30
    assert 'aria-valuenow="30"' in response.content.decode()


@pytest.mark.django_db
def test_anonymous_is_sent_to_log_in(client):
    response = client.get("/usage/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def read_csv(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


@pytest.mark.django_db
def test_csv_export_for_a_date_range(client, org_a, org_b, month):
    a, _ = month
    client.force_login(org_a.owner.user)
    response = client.get("/usage/export.csv?start=2026-11-05&end=2026-11-12")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = read_csv(response)
    wanted = [e for e in a if date(2026, 11, 5) <= e.created_at.astimezone(UTC).date() <= date(2026, 11, 12)]
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in wanted)
    assert sum(Decimal(r["cost_usd"]) for r in rows) == sum(e.cost for e in wanted)
    assert "edge-1-0" in {r["request_id"] for r in rows} and "edge-1-1" in {r["request_id"] for r in rows}
    assert not any(r["request_id"].startswith(("seed-2-", "edge-2-")) for r in rows)


@pytest.mark.django_db
def test_csv_export_writes_a_free_call_as_plain_zeros(client, org_a):
    at = datetime(2026, 11, 6, 12, tzinfo=UTC)
    LedgerEntry.objects.create(
        organization=org_a.organization, membership=org_a.owner, user_email=org_a.owner.user.email,
        request_id="free-call", model="demo", provider="demo", input_per_mtok=0, output_per_mtok=0,
        cached_input_per_mtok=0, cost=0, created_at=at,
    )  # fmt: skip
    client.force_login(org_a.owner.user)
    [row] = read_csv(client.get("/usage/export.csv?start=2026-11-06&end=2026-11-06"))
    money = ("cost_usd", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
    # Fixed-point at each column's places (prices 6, cost 12); str(Decimal) would say 0E-6 / 0E-12.
    assert {field: row[field] for field in money} == {
        "cost_usd": "0.000000000000", "input_per_mtok": "0.000000", "output_per_mtok": "0.000000",
        "cached_input_per_mtok": "0.000000",
    }  # fmt: skip


@pytest.mark.django_db
def test_csv_export_for_a_member_is_their_own(client, org_a, month):
    a, _ = month
    client.force_login(org_a.member.user)
    rows = read_csv(client.get("/usage/export.csv?start=2026-11-01&end=2026-11-30"))
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in a if e.membership_id == org_a.member.id)
    assert client.get("/usage/export.csv?start=nonsense").status_code == 400


@pytest.mark.django_db
def test_admin_sets_a_member_budget(client, org_a, org_b, assert_foreign_404):
    client.force_login(org_a.admin.user)
    url = f"/usage/members/{org_a.member.id}/budget/"
    assert client.post(url, {"monthly_limit_usd": "12.50"}).status_code == 302
    assert Budget.objects.get(membership=org_a.member).monthly_limit_usd == Decimal("12.50")
    assert client.post(url, {"monthly_limit_usd": "-3"}).status_code == 302
    assert Budget.objects.get(membership=org_a.member).monthly_limit_usd == Decimal("12.50")
    assert client.post(url, {"monthly_limit_usd": ""}).status_code == 302
    assert not Budget.objects.filter(membership=org_a.member).exists()
    assert_foreign_404(client.post(f"/usage/members/{org_b.member.id}/budget/", {"monthly_limit_usd": "1"}))
    assert not Budget.objects.filter(membership=org_b.member).exists()


@pytest.mark.django_db
def test_a_member_cannot_set_budgets(client, org_a):
    client.force_login(org_a.member.user)
    response = client.post(f"/usage/members/{org_a.admin.id}/budget/", {"monthly_limit_usd": "100"})
    assert response.status_code == 404
    assert not Budget.objects.exists()


@pytest.mark.django_db
def test_budget_banner_at_thresholds(org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.004"))
    request = SimpleNamespace(membership=fresh(org_a.member), user=org_a.member.user)
    assert budget_banner(request) == {}
    auth = authorize(org_a.member)
    settle(auth, org_a.member)  # $0.003 of $0.004: 75 %
    context = budget_banner(request)
    assert [b.level for b in context["budget_alerts"]] == ["warning"]
    html = render_to_string("billing/_banner.html", context)
    assert "75% used" in html
    auth = authorize(org_a.member, prompt_tokens=0, max_output_tokens=500)
    settle(auth, org_a.member)  # $0.006 billed (the real usage), more than the budget
    html = render_to_string("billing/_banner.html", budget_banner(request))
    assert "used up" in html and "00:00 UTC" in html
