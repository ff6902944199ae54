"""The staff console (/admin/console/): its figures equal sums computed straight from the ledger and
the call log, on a seeded month with several organizations, members, models and providers — part
of it rolled up (DailyUsage, ProviderCallDaily), the rest read from the un-rolled tail."""

from __future__ import annotations

import math
import random
import re
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Membership, Role
from billing import console
from billing.budgets import organization_budget_set
from billing.models import DailyUsage, LedgerEntry, LedgerKind, PeriodSpend, Reservation, RollupState
from billing.periods import period_end, period_start
from billing.usage import usage_rollup
from llm import rollup
from llm.models import ProviderCall, ProviderCallDaily, ProviderCallRollupState

from .conftest import authorize, settle

pytestmark = pytest.mark.django_db

MONTH_START = date(2026, 10, 1)
MONTH_END = date(2026, 11, 1)  # exclusive
ROLLED_THROUGH = date(2026, 10, 20)  # days 1-19 rolled up, 20-31 read from the tail
MODELS = {"gpt-5.2": "openai", "gpt-5.2-instant": "openai", "claude-sonnet-4-5": "anthropic", "gemini-3-flash": "gemini"}

# Shaped like a provider key (built here, so the repository holds no key-shaped string): the
# console must redact it from failure messages.
KEY_LIKE = "sk-" + "abcdef" + "ghijklmnop" + "1234567890"


def _at(rng: random.Random, day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=rng.randrange(86400))


def _latency(rng: random.Random) -> int:
    """Spread over every bucket precision: exact small values, and log-spread large ones."""
    if rng.random() < 0.15:
        return rng.randrange(0, 16)
    return int(math.exp(rng.uniform(math.log(16), math.log(120_000))))


@pytest.fixture
def month(org_a, org_b, organization_factory, member_factory):
    """October 2026: ledger rows and provider calls for four organizations, rolled up through the 19th."""
    org_c = organization_factory(name="Initech", tier="free")
    org_d = organization_factory(name="Umbrella", tier="enterprise")
    members = {
        org_a.organization: [org_a.owner, org_a.admin, org_a.member],
        org_b.organization: [org_b.owner, org_b.member],
        org_c: list(Membership.objects.filter(organization=org_c)) + [member_factory(org_c, role=Role.MEMBER)],
        org_d: list(Membership.objects.filter(organization=org_d)),
    }
    rng = random.Random(12)
    entries = []
    calls = []
    day = MONTH_START
    while day < MONTH_END:
        for organization, people in members.items():
            for _ in range(rng.randrange(0, 6)):
                model = rng.choice(list(MODELS))
                member = rng.choice(people)
                inp, out = rng.randrange(10, 5000), rng.randrange(1, 3000)
                entries.append(
                    LedgerEntry(
                        organization=organization,
                        membership=member,
                        user_email=member.user.email,
                        request_id=f"seed-{uuid.uuid4()}",
                        provider=MODELS[model],
                        model=model,
                        input_tokens=inp,
                        output_tokens=out,
                        input_per_mtok=Decimal("1.25"),
                        output_per_mtok=Decimal("10"),
                        cached_input_per_mtok=Decimal("0.125"),
                        cost=(Decimal(inp) * Decimal("1.25") + Decimal(out) * 10) / 1_000_000
                        + Decimal(rng.randrange(10**6)) / 10**12,  # use all 12 places
                        created_at=_at(rng, day),
                    )
                )
        for _ in range(rng.randrange(5, 25)):
            model = rng.choice(list(MODELS))
            status = rng.choices(["ok", "error", "cancelled"], weights=[80, 15, 5])[0]
            calls.append(
                ProviderCall(
                    organization_id=rng.choice(list(members)).id,
                    request_id=f"seed-{uuid.uuid4()}",
                    provider=MODELS[model],
                    model=model,
                    attempt=rng.randrange(1, 3),
                    started_at=_at(rng, day),
                    time_to_first_token_ms=None if status == "error" and rng.random() < 0.7 else _latency(rng),
                    duration_ms=_latency(rng),
                    input_tokens=rng.randrange(0, 4000),
                    output_tokens=rng.randrange(0, 2000),
                    status=status,
                    error_class="RateLimited" if status == "error" else "",
                    error_message=f"429 from upstream, key {KEY_LIKE} " + "x" * 300
                    if status == "error"
                    else "",
                    prompt_sha256="0" * 64,
                )
            )
        day += timedelta(days=1)
    # A staff credit (as billing.credits writes it): a compensating row with a negative cost and no
    # model, counted in every sum of cost but not as a call.
    entries.append(
        LedgerEntry(
            organization=org_b.organization, membership=None, request_id=f"credit-{uuid.uuid4()}", model="",
            input_per_mtok=0, output_per_mtok=0, cached_input_per_mtok=0, cost=Decimal("-0.012345678901"),
            kind=LedgerKind.CREDIT, note="outage", created_at=datetime(2026, 10, 25, 12, tzinfo=UTC),
        )
    )  # fmt: skip
    LedgerEntry.objects.bulk_create(entries)
    ProviderCall.objects.bulk_create(calls)
    usage_rollup(since=MONTH_START, through=ROLLED_THROUGH)
    rollup.call_log_rollup(since=MONTH_START, through=ROLLED_THROUGH)
    assert DailyUsage.objects.exists() and ProviderCallDaily.objects.exists()
    return {"a": org_a.organization, "b": org_b.organization, "c": org_c, "d": org_d}


def _ledger(start: date, end: date) -> list[LedgerEntry]:
    return list(
        LedgerEntry.objects.filter(
            created_at__gte=datetime(start.year, start.month, start.day, tzinfo=UTC),
            created_at__lt=datetime(end.year, end.month, end.day, tzinfo=UTC),
        )
    )


def _expected_spend(start: date, end: date):
    by_org: dict = defaultdict(Decimal)
    by_model: dict = defaultdict(Decimal)
    by_day: dict = defaultdict(Decimal)
    calls_by_org: dict = defaultdict(int)
    for e in _ledger(start, end):
        by_org[e.organization_id] += e.cost
        by_model[e.model] += e.cost
        by_day[e.created_at.astimezone(UTC).date()] += e.cost
        calls_by_org[e.organization_id] += e.kind == LedgerKind.USAGE  # a credit is not a call
    return by_org, by_model, by_day, calls_by_org


def _nearest_rank(values: list[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _close(reported: float | None, exact: int) -> bool:
    assert reported is not None
    tolerance = 0 if exact < rollup.EXACT_BELOW_MS else rollup.RELATIVE_PRECISION * exact
    return abs(reported - exact) <= tolerance


# --- the read functions ---------------------------------------------------------------------------


def test_spend_equals_the_ledger_sums_per_organization_model_and_day(month):
    report = console.spend_report(start=MONTH_START, end=MONTH_END)
    by_org, by_model, by_day, calls_by_org = _expected_spend(MONTH_START, MONTH_END)

    assert {r.organization_id: r.cost for r in report.by_organization} == dict(by_org)
    assert {r.organization_id: r.calls for r in report.by_organization} == dict(calls_by_org)
    assert {r.model: r.cost for r in report.by_model} == dict(by_model)
    assert len(report.by_day) == 31
    assert {d: c for d, c in report.by_day if c} == {d: c for d, c in by_day.items() if c}
    assert report.total_cost == sum(by_org.values()) == sum(e.cost for e in _ledger(MONTH_START, MONTH_END))
    assert [r.cost for r in report.by_organization] == sorted(by_org.values(), reverse=True)


def test_a_range_across_the_watermark_and_inside_each_side(month):
    for start, end in [
        (date(2026, 10, 5), date(2026, 10, 12)),  # rolled days only
        (date(2026, 10, 22), date(2026, 10, 29)),  # tail only
        (date(2026, 10, 15), date(2026, 10, 25)),  # both
        (date(2026, 9, 25), date(2026, 11, 5)),  # wider than the data
    ]:
        report = console.spend_report(start=start, end=end)
        by_org, by_model, by_day, _ = _expected_spend(start, end)
        assert {r.organization_id: r.cost for r in report.by_organization} == dict(by_org), (start, end)
        assert {r.model: r.cost for r in report.by_model} == dict(by_model), (start, end)
        assert {d: c for d, c in report.by_day if c} == {d: c for d, c in by_day.items() if c}, (start, end)


def test_spend_is_the_same_with_or_without_the_rollup(month):
    rolled = console.spend_report(start=MONTH_START, end=MONTH_END)
    RollupState.objects.filter(pk=1).update(rolled_through=None)  # everything from the ledger
    assert console.spend_report(start=MONTH_START, end=MONTH_END) == rolled


def test_provider_calls_equal_the_call_log(month):
    stats = {(s.provider, s.model): s for s in rollup.call_log_stats(start=MONTH_START, end=MONTH_END)}
    rows = list(ProviderCall.objects.all())
    expected: dict = defaultdict(list)
    for row in rows:
        expected[(row.provider, row.model)].append(row)
    assert set(stats) == set(expected)
    for key, calls in expected.items():
        s = stats[key]
        assert s.calls == len(calls)
        assert s.errors == sum(c.status == "error" for c in calls)
        assert s.error_rate == s.errors / s.calls
        assert s.input_tokens == sum(c.input_tokens for c in calls)
        ttfts = [c.time_to_first_token_ms for c in calls if c.time_to_first_token_ms is not None]
        durations = [c.duration_ms for c in calls]
        assert s.ttft_count == len(ttfts) and s.ttft_sum_ms == sum(ttfts)
        assert s.duration_sum_ms == sum(durations)
        for fraction in (0.5, 0.95):
            assert _close(percentile_of(s, "ttft", fraction), _nearest_rank(ttfts, fraction)), (key, fraction)
            assert _close(percentile_of(s, "duration", fraction), _nearest_rank(durations, fraction)), (key, fraction)


def percentile_of(stats, what: str, fraction: float) -> float | None:
    return getattr(stats, f"{what}_p{int(fraction * 100)}")


def test_provider_calls_are_the_same_with_or_without_the_rollup(month):
    rolled = rollup.call_log_stats(start=MONTH_START, end=MONTH_END)
    ProviderCallRollupState.objects.filter(pk=1).update(rolled_through=None)
    assert rollup.call_log_stats(start=MONTH_START, end=MONTH_END) == rolled


def test_the_rollup_replaces_a_rerolled_day_and_waits_for_late_calls():
    assert rollup.call_log_rollup() == 0  # an empty log
    now = timezone.now()
    ProviderCall.objects.create(
        request_id="r1", provider="openai", model="gpt-5.2", attempt=1, started_at=now - timedelta(days=2),
        duration_ms=1000, status="ok", prompt_sha256="0" * 64,
    )  # fmt: skip
    first = ProviderCall.objects.get().started_at.date()
    assert rollup.call_log_rollup(since=first) == 1
    assert rollup.call_log_rollup(since=first) == 1  # re-rolled: replaced, not added
    assert ProviderCallDaily.objects.get().calls == 1
    state = ProviderCallRollupState.objects.get()
    # A day is rolled only once it has been over for an hour (calls are logged after they end).
    assert state.rolled_through == (now - rollup.ROLLUP_GRACE).astimezone(UTC).date()


def test_bucket_precision_is_as_documented():
    for value in [*range(0, 5000), *range(5000, 3_000_000, 997), 2**31 - 1]:
        reported = rollup.bucket_value(rollup.bucket_of(value))
        if value < rollup.EXACT_BELOW_MS:
            assert reported == value
        else:
            assert abs(reported - value) <= rollup.RELATIVE_PRECISION * value, value


@pytest.fixture
def this_period(org_a, org_b, organization_factory, member_factory, tier_factory, test_model):
    """This month: A at 75 % of its override, B over its override, C near its tier's budget, D far below."""
    org_c = organization_factory(name="Initech", tier="enterprise")
    org_d = organization_factory(name="Umbrella", tier="pro")
    c_member = Membership.objects.get(organization=org_c)
    d_member = Membership.objects.get(organization=org_d)
    for membership in (org_a.member, org_b.member, org_b.admin, c_member, d_member):
        settle(authorize(membership), membership)  # $0.003 each at the test model's price
    streaming = authorize(org_a.admin)  # a turn in progress: its reservation is open
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.004"))  # 75 %
    organization_budget_set(organization=org_b.organization, monthly_limit_usd=Decimal("0.005"))  # 120 %
    tier_factory("enterprise", monthly_budget_usd=Decimal("0.0035"))  # C: 85.7 % of its tier's budget
    return {"a": org_a, "b": org_b, "c": org_c, "d": org_d, "open": streaming}


def test_organizations_near_or_over_budget(this_period):
    rows = {r.slug: r for r in console.budgets_near_or_over()}
    a, b, c = this_period["a"].organization, this_period["b"].organization, this_period["c"]
    assert set(rows) == {a.slug, b.slug, c.slug}  # D (pro: $50) is far below
    start = period_start(timezone.now())
    for organization, limit, level in ((a, Decimal("0.004"), "near"), (b, Decimal("0.005"), "over"),
                                       (c, Decimal("0.0035"), "near")):  # fmt: skip
        row = rows[organization.slug]
        counter = PeriodSpend.objects.get(organization=organization, period_start=start, membership__isnull=True)
        ledger = sum(e.cost for e in LedgerEntry.objects.filter(organization=organization))
        assert row.spent == counter.spent == ledger
        assert row.limit == limit and row.level == level
        assert row.percent == (ledger * 100 / limit).quantize(Decimal("0.1"))
    assert rows[a.slug].percent == Decimal("75.0") and rows[a.slug].overridden
    assert not rows[c.slug].overridden
    assert [r.slug for r in console.budgets_near_or_over()] == [b.slug, c.slug, a.slug]  # fullest first


def test_top_spenders_and_active_streams_this_period(this_period):
    now = timezone.now()
    overview = console.console_overview(start=period_start(now), end=period_end(now).date())
    by_org, _, _, _ = _expected_spend(period_start(now), period_end(now).date())
    assert {(r.organization_id, r.cost) for r in overview.top_organizations} == set(by_org.items())
    assert [r.cost for r in overview.top_organizations] == sorted(by_org.values(), reverse=True)
    assert overview.top_organizations[0].organization_id == this_period["b"].organization.id
    assert {r.email for r in overview.top_members} == {
        m.user.email for m in (this_period["a"].member, this_period["b"].member, this_period["b"].admin)
    } | {m.user.email for m in Membership.objects.filter(organization__in=[this_period["c"], this_period["d"]])}
    assert overview.streams.count == 1
    assert overview.streams.latest[0].request_id == this_period["open"].request_id
    assert overview.streams.held == Reservation.objects.get(request_id=this_period["open"].request_id).amount > 0


def test_recent_failures_are_the_latest_errors_with_short_redacted_messages(month):
    failures = console.console_overview(start=MONTH_START, end=MONTH_END).failures
    latest = list(ProviderCall.objects.filter(status="error").order_by("-started_at")[:20])
    assert [(f.started_at, f.model, f.provider, f.error_class) for f in failures] == [
        (c.started_at, c.model, c.provider, c.error_class) for c in latest
    ]
    assert all("sk-abcdef" not in f.message and len(f.message) <= 120 for f in failures)
    assert "[redacted]" in failures[0].message


# --- the page ---------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, user_factory):
    client.force_login(user_factory(is_staff=True))
    return client


def _values(html: str, section: str, key_attr: str, cell: str) -> dict[str, str]:
    block = html[html.index(f'id="{section}"') :]
    block = block[: block.index("</section>")]
    found = {}
    for row in re.finditer(rf'<tr {key_attr}="([^"]*)"(.*?)</tr>', block, re.S):
        value = re.search(rf'class="num {cell}" data-value="([^"]*)"', row.group(2))
        if value:
            found[row.group(1)] = value.group(1)
    return found


def test_the_page_shows_the_same_figures(staff_client, month):
    response = staff_client.get("/admin/console/", {"start": "2026-10-01", "end": "2026-10-31"})
    assert response.status_code == 200
    html = response.content.decode()
    by_org, by_model, by_day, calls_by_org = _expected_spend(MONTH_START, MONTH_END)

    total = re.search(r'id="total-cost" data-value="([^"]+)"', html).group(1)
    assert Decimal(total) == sum(by_org.values())
    slugs = {o.id: o.slug for o in month.values()}
    assert {k: Decimal(v) for k, v in _values(html, "spend-by-organization", "data-organization", "cost").items()} == {
        slugs[k]: v for k, v in by_org.items()
    }
    assert {k: int(v) for k, v in _values(html, "spend-by-organization", "data-organization", "calls").items()} == {
        slugs[k]: v for k, v in calls_by_org.items()
    }
    assert {k: Decimal(v) for k, v in _values(html, "spend-by-model", "data-model", "cost").items()} == dict(by_model)
    bars = dict(re.findall(r'<rect [^>]*data-day="([\d-]+)" data-value="([^"]+)"', html))
    assert len(bars) == 31
    assert {date.fromisoformat(d): Decimal(v) for d, v in bars.items() if Decimal(v)} == {
        d: c for d, c in by_day.items() if c
    }
    # Provider calls: counts and errors per provider and model, and the percentiles shown.
    calls = list(ProviderCall.objects.all())
    block = html[html.index('id="provider-calls"') :]
    for provider, model in {(c.provider, c.model) for c in calls}:
        mine = [c for c in calls if (c.provider, c.model) == (provider, model)]
        row = re.search(rf'<tr data-provider="{provider}" data-model="{model}">(.*?)</tr>', block, re.S).group(1)
        assert re.search(r'class="num calls" data-value="(\d+)"', row).group(1) == str(len(mine))
        assert re.search(r'class="num errors" data-value="(\d+)"', row).group(1) == str(
            sum(c.status == "error" for c in mine)
        )
        p95 = float(re.search(r'class="num duration-p95" data-value="([^"]+)"', row).group(1))
        assert _close(p95, _nearest_rank([c.duration_ms for c in mine], 0.95))
    # Recent failures: the error class, never the key in a message.
    assert 'class="error-class">RateLimited<' in html
    assert "sk-abcdef" not in html


def test_the_page_shows_budgets_and_streams(staff_client, this_period):
    html = staff_client.get("/admin/console/").content.decode()
    levels = dict(re.findall(r'<tr data-organization="([^"]+)" data-level="(\w+)"', html))
    assert levels == {
        this_period["a"].organization.slug: "near",
        this_period["b"].organization.slug: "over",
        this_period["c"].slug: "near",
    }
    assert re.search(r'id="streams-count" data-value="1"', html)
    assert this_period["open"].request_id in html


def test_a_bad_range_falls_back_to_this_month(staff_client):
    html = staff_client.get("/admin/console/", {"start": "2026-13-01"}).content.decode()
    assert 'id="range-error"' in html
    start, end = console.console_default_range()
    assert f'value="{start:%Y-%m-%d}"' in html and f'value="{end:%Y-%m-%d}"' in html


def test_the_admin_index_links_to_the_console(staff_client):
    html = staff_client.get("/admin/").content.decode()
    assert 'href="/admin/console/"' in html and "Staff console" in html


@pytest.mark.parametrize("who", ["anonymous", "member"])
def test_non_staff_get_the_admin_login(client, org_a, who):
    if who == "member":
        client.force_login(org_a.owner.user)
    response = client.get("/admin/console/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/admin/console/")


def test_the_call_log_rollup_runs_on_beat(month):
    from django.conf import settings

    from llm import tasks

    assert {"task": "llm.call_log_rollup", "schedule": 900.0} in settings.CELERY_BEAT_SCHEDULE.values()
    before = rollup.call_log_stats(start=MONTH_START, end=MONTH_END)
    assert tasks.call_log_rollup.delay().get() > 0  # rolls from the watermark through yesterday
    assert ProviderCallRollupState.objects.get().rolled_through > MONTH_END
    assert rollup.call_log_stats(start=MONTH_START, end=MONTH_END) == before  # now all from the rollup
