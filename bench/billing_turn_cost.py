"""Cost of billing per chat turn: turn_authorize + turn_settle, on PostgreSQL (and Redis when set).

    createdb -h 127.0.0.1 -p 55432 -U postgres parley_bench_billing
    DATABASE_URL=postgres://postgres@127.0.0.1:55432/parley_bench_billing \
    REDIS_URL=redis://127.0.0.1:6392/0 .venv/bin/python bench/billing_turn_cost.py [turns]

Migrates the database, makes an organization on its own tier, then times sequential turns
(authorize, settle) and a concurrent run (8 threads, one member each). Prints the figures.
"""

import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from accounts.models import Membership, Organization, Role, Tier, User  # noqa: E402
from billing.limits import limiter  # noqa: E402
from billing.models import Price  # noqa: E402
from billing.reservations import turn_authorize  # noqa: E402
from billing.settlement import turn_settle  # noqa: E402
from llm.types import Usage  # noqa: E402

MODEL = "bench-model"


def setup(members: int) -> list[Membership]:
    call_command("migrate", verbosity=0)
    Price.objects.get_or_create(
        model=MODEL,
        effective_at=datetime(2020, 1, 1, tzinfo=UTC),
        defaults={"input_per_mtok": Decimal("1"), "output_per_mtok": Decimal("2")},
    )
    tag = uuid.uuid4().hex[:8]
    tier = Tier.objects.create(
        slug=f"bench-{tag}", name=f"Bench {tag}", monthly_budget_usd=Decimal("1000000"),
        requests_per_minute=10**6, tokens_per_minute=10**9, allowed_models=[MODEL], max_output_tokens=1000,
    )  # fmt: skip
    organization = Organization.objects.create(name=f"Bench {tag}", slug=f"bench-{tag}", tier=tier)
    result = []
    for n in range(members):
        user = User.objects.create_user(email=f"bench-{tag}-{n}@example.com", password=None)
        m = Membership.objects.create(user=user, organization=organization, role=Role.OWNER if n == 0 else Role.MEMBER)
        result.append(Membership.objects.select_related("organization__tier", "user").get(pk=m.pk))
    return result


def one_turn(membership: Membership) -> tuple[float, float]:
    request_id = f"bench-{uuid.uuid4()}"
    t0 = time.perf_counter()
    auth = turn_authorize(
        membership=membership, model=MODEL, prompt_tokens=1200, longest_message_chars=100,
        max_output_tokens=800, request_id=request_id,
    )  # fmt: skip
    t1 = time.perf_counter()
    turn_settle(
        authorization=auth,
        usages=[Usage(1200, 350, call_id=f"{request_id}:0", model=MODEL, provider="bench")],
        membership=membership,
    )
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    turns = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    members = setup(8)
    print(f"database: {engine}; rate limits in {'Redis' if limiter().using_redis else 'process memory'}")
    for _ in range(20):
        one_turn(members[0])
    authorize_ms, settle_ms = [], []
    for _ in range(turns):
        a, s = one_turn(members[0])
        authorize_ms.append(a)
        settle_ms.append(s)
    total = [a + s for a, s in zip(authorize_ms, settle_ms, strict=True)]
    print(f"sequential, {turns} turns:")
    for name, values in (("authorize", authorize_ms), ("settle", settle_ms), ("authorize+settle", total)):
        print(
            f"  {name:17s} mean {statistics.mean(values):6.2f} ms  p50 {pct(values, .5):6.2f} ms  "
            f"p95 {pct(values, .95):6.2f} ms  p99 {pct(values, .99):6.2f} ms"
        )

    lock = threading.Lock()
    done = []

    def worker(membership: Membership, n: int) -> None:
        try:
            for _ in range(n):
                a, s = one_turn(membership)
                with lock:
                    done.append(a + s)
        finally:
            connection.close()

    per_thread = max(1, turns // 8)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(worker, m, per_thread) for m in members]:
            future.result()
    elapsed = time.perf_counter() - started
    print(
        f"concurrent, 8 threads x {per_thread} turns (one organization, so they serialize on its budget row): "
        f"{len(done) / elapsed:.0f} turns/s, p50 {pct(done, .5):.2f} ms, p95 {pct(done, .95):.2f} ms"
    )


if __name__ == "__main__":
    main()
