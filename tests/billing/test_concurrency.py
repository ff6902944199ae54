"""Budgets cannot be overshot by concurrent turns: threads, then several processes, on PostgreSQL."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from accounts.errors import ParleyError
from billing.budgets import member_budget_set, organization_budget_set
from billing.models import LedgerEntry, PeriodSpend, Reservation, ReservationStatus

from .conftest import authorize, ensure_test_model, fresh, settle

TURN_COST = Decimal("0.003")  # 1000 prompt + 1000 output tokens at $1 / $2 per million

pytestmark = pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"), reason="needs PostgreSQL"
)


def _open_reservations() -> int:
    return Reservation.objects.filter(status=ReservationStatus.OPEN).count()


# serialized_rollback: the flush after each transactional test would drop the rows migrations seed
# (tiers, prices), and like the other apps' transactional tests, these restore them.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_50_concurrent_turns_against_a_budget_that_fits_10(org_a):
    ensure_test_model()
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=TURN_COST * 10)
    member = fresh(org_a.member)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def turn() -> None:
        try:
            barrier.wait()
            try:
                auth = authorize(member)
            except ParleyError as error:
                result = error.code
            else:
                time.sleep(0.01)
                settle(auth, member)
                result = "ok"
            with lock:
                outcomes.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=turn) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 50
    assert outcomes.count("ok") == 10
    assert set(outcomes) == {"ok", "budget_exceeded"}
    counter = PeriodSpend.objects.get(organization=org_a.organization, membership__isnull=True)
    assert counter.spent == TURN_COST * 10 and counter.reserved == 0
    assert sum(LedgerEntry.objects.filter(organization=org_a.organization).values_list("cost", flat=True)) == counter.spent
    assert _open_reservations() == 0


# serialized_rollback: the flush after each transactional test would drop the rows migrations seed
# (tiers, prices), and like the other apps' transactional tests, these restore them.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_200_turns_from_several_processes_with_organization_and_member_budgets(org_a, member_factory):
    ensure_test_model()
    members = [fresh(org_a.member), fresh(org_a.admin), fresh(org_a.owner), fresh(member_factory(org_a.organization))]
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=TURN_COST * 40)
    member_limits = {members[0].id: 6, members[1].id: 15, members[2].id: 30}  # the 4th has no own budget
    for member in members:
        if member.id in member_limits:
            member_budget_set(actor=members[2], member=member, monthly_limit_usd=TURN_COST * member_limits[member.id])

    db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["DATABASE_POOL_MAX"] = "10"
    env.pop("DATABASE_TEST_NAME", None)
    root = Path(settings.BASE_DIR)
    start_at = time.time() + 3
    processes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "tests.billing._turn_worker",
                json.dumps(
                    {
                        "memberships": [str(m.id) for m in members],
                        "turns": 50,
                        "threads": 8,
                        "start_at": start_at,
                        "prefix": f"p{n}-{uuid.uuid4()}",
                    }
                ),
            ],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for n in range(4)
    ]
    outcomes: list[tuple[str, str]] = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-3000:]
        outcomes += [tuple(o) for o in json.loads(out.strip().splitlines()[-1])]

    assert len(outcomes) == 200
    codes = {code for _, code in outcomes}
    assert codes <= {"ok", "budget_exceeded"}, codes
    admitted = [m for m, code in outcomes if code == "ok"]
    assert len(admitted) == 40  # the organization's budget is the binding one
    for member in members:
        if member.id in member_limits:
            assert admitted.count(str(member.id)) <= member_limits[member.id]
    assert admitted.count(str(members[0].id)) == 6  # its own budget runs out first

    counters = {
        c.membership_id: c for c in PeriodSpend.objects.filter(organization=org_a.organization)
    }
    assert counters[None].spent == TURN_COST * 40 and counters[None].reserved == 0
    for member in members:
        counter = counters[member.id]
        assert counter.reserved == 0
        assert counter.spent == TURN_COST * admitted.count(str(member.id))
        if member.id in member_limits:
            assert counter.spent <= TURN_COST * member_limits[member.id]
    ledger = list(LedgerEntry.objects.filter(organization=org_a.organization).values_list("cost", flat=True))
    assert len(ledger) == 40 and sum(ledger) == TURN_COST * 40
    assert _open_reservations() == 0
