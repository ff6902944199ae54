"""The staff console's query time at 10 k and 1 M ledger rows and 1 M call-log rows, on PostgreSQL.

    createdb -h 127.0.0.1 -p 55432 -U postgres parley_bench_console
    DATABASE_URL=postgres://postgres@127.0.0.1:55432/parley_bench_console \
    .venv/bin/python bench/staff_console.py [max_rows]

Migrates the database, makes 200 organizations with 5 members each, then for each size inserts
ledger rows and provider calls with generate_series (spread over the last 60 days, so today's
un-rolled tail is about 1/60 of them), runs both daily rollups (billing.usage.usage_rollup and
llm.rollup.call_log_rollup) and times, for the last 31 days: every data function of the page
(billing.console.console_overview) and the whole page through the test client (a staff user), then
the same data functions with both rollups set aside (everything read from the ledger and the log),
for comparison. "cold" is the first view after a rollup (the rolled days' totals are then cached
under the rollup's stamp; later views read only the tail). Checks the console's total against
SUM(cost) of the ledger, and its provider-call count against COUNT(*) of the log, at each size.
"""

import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.hashers import make_password  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.models import Membership, Organization, Role, Tier, User  # noqa: E402
from billing import console  # noqa: E402
from billing.models import DailyUsage, PeriodSpend, Reservation, RollupState  # noqa: E402
from billing.periods import period_start  # noqa: E402
from billing.usage import usage_rollup  # noqa: E402
from llm.models import ProviderCallDaily, ProviderCallRollupState  # noqa: E402
from llm.rollup import call_log_rollup  # noqa: E402

ORGANIZATIONS = 200
MEMBERS = 5
DAYS = 60
MODELS = [
    ("openai", "gpt-5.2-instant"), ("openai", "gpt-5.2"), ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"), ("gemini", "gemini-3-flash"), ("gemini", "gemini-2.5-flash"),
]  # fmt: skip


def seed_organizations(tag: str) -> None:
    tiers = list(Tier.objects.all())
    unusable = make_password(None)
    organizations = Organization.objects.bulk_create(
        Organization(name=f"Console bench {tag} {n}", slug=f"console-bench-{tag}-{n}", tier=tiers[n % len(tiers)])
        for n in range(ORGANIZATIONS)
    )
    users = User.objects.bulk_create(
        User(email=f"cb-{tag}-{n}@example.com", password=unusable) for n in range(ORGANIZATIONS * MEMBERS)
    )
    Membership.objects.bulk_create(
        Membership(user=users[n], organization=organizations[n // MEMBERS], role=Role.OWNER if n % MEMBERS == 0 else Role.MEMBER)
        for n in range(len(users))
    )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_members")
        cursor.execute(
            "CREATE TABLE bench_members AS SELECT (row_number() OVER (ORDER BY m.id) - 1)::int AS idx, "
            "m.id AS membership_id, m.organization_id FROM accounts_membership m "
            "JOIN accounts_organization o ON o.id = m.organization_id WHERE o.slug LIKE %s",
            [f"console-bench-{tag}-%"],
        )
        cursor.execute("CREATE UNIQUE INDEX ON bench_members (idx)")
        cursor.execute("DROP TABLE IF EXISTS bench_models")
        cursor.execute("CREATE TABLE bench_models (idx int PRIMARY KEY, provider text, model text)")
        for n, (provider, model) in enumerate(MODELS):
            cursor.execute("INSERT INTO bench_models VALUES (%s, %s, %s)", [n, provider, model])


def load(first: int, last: int, tag: str) -> float:
    """Ledger rows and provider calls numbered [first, last): generate_series, one INSERT each."""
    started = time.perf_counter()
    members = ORGANIZATIONS * MEMBERS
    span = DAYS * 86400
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO billing_ledgerentry (id, organization_id, membership_id, user_email, request_id,
                turn_request_id, provider, model, input_tokens, output_tokens, cached_input_tokens,
                input_per_mtok, output_per_mtok, cached_input_per_mtok, cost, estimated, kind, note, created_at)
            SELECT gen_random_uuid(), m.organization_id, m.membership_id, '', 'cb-{tag}-' || g, '',
                   b.provider, b.model, t.inp, t.outp, 0, 1.25, 10, 0.125,
                   round((t.inp * 1.25 + t.outp * 10) / 1000000.0, 12), false, 'usage', '',
                   now() - (random() * {span}) * interval '1 second'
            FROM generate_series(%s::int, %s::int - 1) AS g
            CROSS JOIN LATERAL (SELECT (random() * 6000)::int + 10 AS inp, (random() * 2000)::int + 1 AS outp) t
            JOIN bench_members m ON m.idx = (hashint4(g) & 2147483647) %% {members}
            JOIN bench_models b ON b.idx = g %% {len(MODELS)}
            """,
            [first, last],
        )
        cursor.execute(
            f"""
            INSERT INTO llm_providercall (id, organization_id, user_id, request_id, call_id, provider, model,
                vendor_model, attempt, round, started_at, time_to_first_token_ms, duration_ms, input_tokens,
                output_tokens, cached_input_tokens, usage_estimated, status, finish_reason, error_class,
                error_message, prompt_sha256)
            SELECT gen_random_uuid(), m.organization_id, NULL, 'cb-{tag}-' || g, '', b.provider, b.model, '', 1, 1,
                   now() - (random() * {span}) * interval '1 second',
                   CASE WHEN s.status = 'error' AND random() < 0.7 THEN NULL
                        ELSE (exp(ln(50) + random() * ln(100)))::int END,
                   (exp(ln(200) + random() * ln(300)))::int,
                   (random() * 6000)::int, (random() * 2000)::int, 0, false, s.status, '',
                   CASE WHEN s.status = 'error' THEN 'RateLimited' ELSE '' END,
                   CASE WHEN s.status = 'error' THEN '429 Too Many Requests' ELSE '' END, repeat('0', 64)
            FROM generate_series(%s::int, %s::int - 1) AS g
            CROSS JOIN LATERAL (SELECT CASE WHEN random() < 0.04 THEN 'error'
                                            WHEN random() < 0.02 THEN 'cancelled' ELSE 'ok' END AS status) s
            JOIN bench_members m ON m.idx = (hashint4(g) & 2147483647) %% {members}
            JOIN bench_models b ON b.idx = g %% {len(MODELS)}
            """,
            [first, last],
        )
        cursor.execute("ANALYZE billing_ledgerentry")
        cursor.execute("ANALYZE llm_providercall")
    return time.perf_counter() - started


def counters(now) -> None:
    """This period's organization counters from the ledger, and a few turns in progress."""
    start = period_start(now)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM billing_reservation WHERE request_id LIKE %s", ["cb-open-%"])
        cursor.execute("DELETE FROM billing_periodspend WHERE period_start = %s AND membership_id IS NULL", [start])
        cursor.execute(
            "INSERT INTO billing_periodspend (organization_id, membership_id, period_start, spent, reserved) "
            "SELECT organization_id, NULL, %s, SUM(cost), 0 FROM billing_ledgerentry WHERE created_at >= %s "
            "GROUP BY organization_id",
            [start, datetime(start.year, start.month, 1, tzinfo=UTC)],
        )
    for n, counter in enumerate(PeriodSpend.objects.filter(period_start=start, membership__isnull=True)[:40]):
        Reservation.objects.create(
            organization_id=counter.organization_id, request_id=f"cb-open-{n}-{uuid.uuid4().hex[:6]}",
            model="gpt-5.2", amount=Decimal("0.05"), org_counter=counter, expires_at=now + timedelta(minutes=10),
        )  # fmt: skip


def timed(fn, repeat: int = 5) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    maximum = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    if connection.vendor != "postgresql":
        sys.exit("Set DATABASE_URL to a PostgreSQL database (see the docstring).")
    call_command("migrate", verbosity=0)
    tag = uuid.uuid4().hex[:8]
    seed_organizations(tag)
    staff = User.objects.create_user(email=f"cb-staff-{tag}@example.com", password=None, is_staff=True)
    client = Client()
    client.force_login(staff)
    now = timezone.now().astimezone(UTC)
    today = now.date()
    start, end = today - timedelta(days=30), today + timedelta(days=1)
    query = {"start": start.isoformat(), "end": today.isoformat()}

    print(f"{ORGANIZATIONS} organizations × {MEMBERS} members, {len(MODELS)} models, rows over the last {DAYS} days; range {start} – {today}")
    print(
        f"{'ledger rows':>11} {'call rows':>10} {'load s':>7} {'rollups s':>9} {'summary rows':>12} "
        f"{'data ms cold':>12} {'data ms':>8} {'page ms':>8} {'data ms, no rollup':>18}  check"
    )
    loaded = 0
    for target in (10_000, 1_000_000):
        if target > maximum:
            break
        load_s = load(loaded, target, tag)
        loaded = target
        t0 = time.perf_counter()
        usage_rollup(since=today - timedelta(days=DAYS + 1), through=today)
        call_log_rollup(since=today - timedelta(days=DAYS + 1), through=today)
        rollup_s = time.perf_counter() - t0
        counters(now)

        cache.clear()  # the first view after a rollup computes the rolled days' totals
        t0 = time.perf_counter()
        console.console_overview(start=start, end=end)
        cold_ms = (time.perf_counter() - t0) * 1000
        data_ms = timed(lambda: console.console_overview(start=start, end=end))
        page_ms = timed(lambda: client.get("/admin/console/", query))
        response = client.get("/admin/console/", query)
        assert response.status_code == 200, response.status_code

        rolled_ledger, rolled_calls = RollupState.objects.get(pk=1).rolled_through, ProviderCallRollupState.objects.get(pk=1).rolled_through
        RollupState.objects.filter(pk=1).update(rolled_through=None)
        ProviderCallRollupState.objects.filter(pk=1).update(rolled_through=None)
        cache.clear()
        raw_ms = timed(lambda: console.console_overview(start=start, end=end), repeat=1)
        RollupState.objects.filter(pk=1).update(rolled_through=rolled_ledger)
        ProviderCallRollupState.objects.filter(pk=1).update(rolled_through=rolled_calls)

        overview = console.console_overview(start=start, end=end)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COALESCE(SUM(cost), 0), COUNT(*) FROM billing_ledgerentry WHERE created_at >= %s AND created_at < %s",
                [datetime(start.year, start.month, start.day, tzinfo=UTC),
                 datetime(end.year, end.month, end.day, tzinfo=UTC)],
            )  # fmt: skip
            ledger_sum, ledger_count = cursor.fetchone()
            cursor.execute(
                "SELECT COUNT(*) FROM llm_providercall WHERE started_at >= %s AND started_at < %s",
                [datetime(start.year, start.month, start.day, tzinfo=UTC),
                 datetime(end.year, end.month, end.day, tzinfo=UTC)],
            )  # fmt: skip
            (call_count,) = cursor.fetchone()
            cursor.execute("SELECT COUNT(*) FROM billing_ledgerentry")
            (ledger_rows,) = cursor.fetchone()
            cursor.execute("SELECT COUNT(*) FROM llm_providercall")
            (call_rows,) = cursor.fetchone()
        matches = (
            overview.spend.total_cost == ledger_sum
            and overview.spend.total_calls == ledger_count
            and overview.total_provider_calls == call_count
        )
        summary_rows = DailyUsage.objects.count() + ProviderCallDaily.objects.count()
        print(
            f"{ledger_rows:>11} {call_rows:>10} {load_s:>7.1f} {rollup_s:>9.1f} {summary_rows:>12} "
            f"{cold_ms:>12.1f} {data_ms:>8.1f} {page_ms:>8.1f} {raw_ms:>18.1f}  "
            f"{'total = SUM(cost)' if matches else 'MISMATCH'} (${overview.spend.total_cost:.2f}, "
            f"{overview.spend.total_calls} billed calls, {overview.total_provider_calls} provider calls)"
        )


if __name__ == "__main__":
    main()
