"""How the usage page's queries grow with the ledger: 10 k → 100 k → 1 M rows.

    createdb -h 127.0.0.1 -p 55432 -U postgres parley_bench_billing
    DATABASE_URL=postgres://postgres@127.0.0.1:55432/parley_bench_billing \
    .venv/bin/python bench/billing_usage_page.py [max_rows]

Bulk-loads ledger rows with COPY for one organization (30 members, 6 models, the last 30 days,
1,000 of its rows today) plus as many for other organizations, rolls finished days into the daily
summary, then times the usage report an owner sees (per day, per model, per member) — once
with the summary, and once reading the ledger alone, for comparison.
"""

import os
import random
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

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.models import Membership, Organization, Role, Tier, User  # noqa: E402
from billing.models import DailyUsage, LedgerEntry, RollupState  # noqa: E402
from billing.selectors import budget_statuses, usage_report  # noqa: E402
from billing.usage import usage_rollup  # noqa: E402

MODELS = ["gpt-5.2-instant", "gpt-5.2", "claude-sonnet-4-5", "claude-haiku-4-5", "gemini-3-flash", "gemini-2.5-flash"]
COLUMNS = (
    "id", "organization_id", "membership_id", "user_email", "request_id", "turn_request_id", "provider", "model",
    "input_tokens", "output_tokens", "cached_input_tokens", "input_per_mtok", "output_per_mtok",
    "cached_input_per_mtok", "cost", "estimated", "created_at",
)  # fmt: skip


def make_org(tag: str, members: int) -> tuple[Organization, list[Membership]]:
    tier = Tier.objects.get(slug="enterprise")
    organization = Organization.objects.create(name=f"Usage bench {tag}", slug=f"usage-bench-{tag}", tier=tier)
    result = []
    for n in range(members):
        user = User.objects.create_user(email=f"ub-{tag}-{n}@example.com", password=None)
        result.append(
            Membership.objects.create(user=user, organization=organization, role=Role.OWNER if n == 0 else Role.MEMBER)
        )
    return organization, result


def load(rows: int, orgs: list[tuple[Organization, list[Membership]]], now: datetime, seed: int, today_rows: int) -> float:
    """COPY `rows` ledger rows: half to the measured organization (the first), half to the others.

    The first `today_rows` are from today; the rest from the 30 days before, so the history grows
    while a day's traffic stays the same, as in a real ledger."""
    rng = random.Random(seed)
    span = 30 * 86400
    started = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor, for COPY
        with raw.copy(f"COPY billing_ledgerentry ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for n in range(rows):
                organization, members = orgs[0] if n % 2 == 0 else orgs[1 + n % (len(orgs) - 1)]
                member = members[rng.randrange(len(members))]
                if n < today_rows:
                    at = now - timedelta(seconds=rng.random() * (now.hour * 3600 + now.minute * 60))
                else:
                    at = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(seconds=1 + rng.random() * span)
                inp, out = rng.randrange(50, 6000), rng.randrange(10, 2000)
                copy.write_row(
                    (
                        uuid.uuid4(), organization.id, member.id, "", f"bench-{seed}-{n}-{uuid.uuid4().hex[:8]}", "",
                        "bench", MODELS[rng.randrange(len(MODELS))], inp, out, 0, Decimal("1"), Decimal("2"), Decimal("1"),
                        (Decimal(inp) + Decimal(out) * 2) / Decimal(1_000_000), False, at,
                    )
                )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_ledgerentry")
    return time.perf_counter() - started


def timed(fn, repeat: int = 7) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    maximum = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    call_command("migrate", verbosity=0)
    tag = uuid.uuid4().hex[:8]
    orgs = [make_org(f"{tag}-{n}", 30 if n == 0 else 5) for n in range(5)]
    measured, members = orgs[0]
    owner = Membership.objects.select_related("organization__tier", "user").get(pk=members[0].pk)
    now = timezone.now().astimezone(UTC)
    start = (now - timedelta(days=31)).date()
    end = now.date() + timedelta(days=1)
    print(f"ledger rows before: {LedgerEntry.objects.count()}")
    print(f"{'ledger rows':>12} {'load s':>7} {'rollup s':>8} {'summary rows':>12} {'page ms (summary)':>18} {'page ms (ledger only)':>22}")
    total = 0
    for target in (10_000, 100_000, 1_000_000):
        if target > maximum:
            break
        load_s = load(target - total, orgs, now, seed=target, today_rows=2000 if total == 0 else 0)
        total = target
        t0 = time.perf_counter()
        usage_rollup(since=start, through=now.date())
        rollup_s = time.perf_counter() - t0

        def page():
            report = usage_report(organization=measured, start=start, end=end)
            budget_statuses(membership=owner)
            return report

        with_summary = timed(page)
        state = RollupState.objects.get(pk=1)
        rolled = state.rolled_through
        state.rolled_through = None  # read every day from the ledger
        state.save()
        ledger_only = timed(page, repeat=3)
        state.rolled_through = rolled
        state.save()
        report = page()
        summary_rows = DailyUsage.objects.filter(organization=measured).count()
        print(
            f"{LedgerEntry.objects.count():>12} {load_s:>7.1f} {rollup_s:>8.1f} {summary_rows:>12} "
            f"{with_summary:>18.1f} {ledger_only:>22.1f}   (org total ${report.total_cost:.2f}, {report.total_calls} calls)"
        )


if __name__ == "__main__":
    main()
