"""What an audit event adds to an API-key create and to a role change: ms per op, events on and off.

    createdb -h 127.0.0.1 -p 55432 -U postgres parley_bench_audit
    DATABASE_URL=postgres://postgres@127.0.0.1:55432/parley_bench_audit \
    .venv/bin/python bench/audit_overhead.py [--ops 300] [--rounds 3] [--verify-rows 1000000]

Migrates the database, makes an organization with an owner and a member, then times the services
one call at a time, as a request makes them (the owner bound as the audit actor):
`accounts.services.api_key_create` and `accounts.services.membership_change_role` (the member
flips between member and admin, so every call is a change). Events are switched off with
`settings.PARLEY_AUDIT_ENABLED = False` (accounts.audit.audit_enabled); rounds alternate off / on,
each after a warm-up, since the machine's load drifts. DEBUG is off, as in production. The bench
measures the services as they are: it counts the events each call wrote, and says so when a
service records none (then "on" and "off" run the same code), and the SQL statements of one call.

With --verify-rows N it also loads one chain of N valid events (COPY, hashes computed here) and
times `audit_verify` on it, with the process's peak memory before and after (the walk streams).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.audit import GENESIS_HASH, audit_actor, event_hash  # noqa: E402
from accounts.audit_integrity import audit_verify  # noqa: E402
from accounts.models import ActorType, AuditChainHead, AuditEvent, Membership, Organization, Role, Tier, User  # noqa: E402
from accounts.services import api_key_create, membership_change_role  # noqa: E402


def setup() -> tuple[Membership, Membership]:
    call_command("migrate", verbosity=0)
    tag = uuid.uuid4().hex[:8]
    organization = Organization.objects.create(
        name=f"Audit bench {tag}", slug=f"audit-bench-{tag}", tier=Tier.objects.get(slug="pro")
    )
    owner_user = User.objects.create_user(email=f"ab-owner-{tag}@example.com", password=None)
    member_user = User.objects.create_user(email=f"ab-member-{tag}@example.com", password=None)
    Membership.objects.create(user=owner_user, organization=organization, role=Role.OWNER)
    Membership.objects.create(user=member_user, organization=organization, role=Role.MEMBER)
    members = Membership.objects.select_related("organization__tier", "user").filter(organization=organization)
    return members.get(user=owner_user), members.get(user=member_user)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(operation, ops: int, warmup: int) -> list[float]:
    for n in range(warmup):
        operation(n)
    samples = []
    for n in range(ops):
        t0 = time.perf_counter()
        operation(warmup + n)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def measure(name: str, operation, organization_id, *, ops: int, rounds: int, warmup: int) -> dict:
    samples: dict[bool, list[float]] = {False: [], True: []}
    events: dict[bool, int] = {False: 0, True: 0}
    for round_ in range(rounds):
        for enabled in (False, True) if round_ % 2 == 0 else (True, False):
            settings.PARLEY_AUDIT_ENABLED = enabled
            before = AuditEvent.objects.filter(organization_id=organization_id).count()
            samples[enabled] += run(operation, ops, warmup)
            events[enabled] += AuditEvent.objects.filter(organization_id=organization_id).count() - before
    statements = {}
    for n, enabled in enumerate((False, True)):  # SQL statements of one call (BEGIN, COMMIT not counted)
        settings.PARLEY_AUDIT_ENABLED = enabled
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            operation(n)  # (0 then 1: the role flips to admin and back, each a change)
        statements[enabled] = len(captured)
    settings.PARLEY_AUDIT_ENABLED = True
    per_op = {enabled: events[enabled] / ((ops + warmup) * rounds) for enabled in (False, True)}
    return {"name": name, "samples": samples, "events_per_op": per_op, "statements": statements}


def report(rows: list[dict]) -> None:
    print(
        f"{'operation':<26} {'off median':>10} {'off p95':>8} {'on median':>10} {'on p95':>8} "
        f"{'added ms':>9} {'ratio':>6} {'events/op on':>13} {'SQL off/on':>10}"
    )
    for row in rows:
        off, on = row["samples"][False], row["samples"][True]
        off_median, on_median = statistics.median(off), statistics.median(on)
        print(
            f"{row['name']:<26} {off_median:>10.3f} {percentile(off, 95):>8.3f} {on_median:>10.3f} "
            f"{percentile(on, 95):>8.3f} {on_median - off_median:>9.3f} {on_median / off_median:>6.2f} "
            f"{row['events_per_op'][True]:>13.2f} {row['statements'][False]:>6}/{row['statements'][True]}"
        )
        if row["events_per_op"][True] == 0:
            print(f"  note: {row['name']} recorded no audit event: on and off ran the same code")
        if row["events_per_op"][False]:
            print(f"  note: {row['name']} recorded events with PARLEY_AUDIT_ENABLED = False")


def load_chain(rows: int) -> str:
    """One chain (a made-up organization id) of `rows` valid events, COPYed in; its head."""
    organization_id = uuid.uuid4()
    columns = (
        "id", "created_at", "organization_id", "sequence", "actor_type", "actor_label", "action", "target_type",
        "target_id", "target_label", "changes", "user_agent", "request_id", "prev_hash", "hash",
    )  # fmt: skip
    start = timezone.now() - timedelta(days=365)
    prev = GENESIS_HASH
    event = AuditEvent(organization_id=organization_id, actor_type=ActorType.SYSTEM, actor_label="bench")
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY accounts_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
            for n in range(1, rows + 1):
                event.id = uuid.uuid4()
                event.created_at = start + timedelta(milliseconds=n)
                event.sequence = n
                event.action = "api_key.create"
                event.target_type, event.target_id, event.target_label = "apikey", str(n), f"key {n}"
                event.changes = {"name": [None, f"key {n}"], "prefix": [None, "pk_0123456"]}
                event.user_agent, event.request_id = "bench/1.0", f"req-{n}"
                event.hash = event_hash(event, prev)
                copy.write_row(
                    (
                        event.id, event.created_at, organization_id, n, event.actor_type, event.actor_label,
                        event.action, event.target_type, event.target_id, event.target_label,
                        json.dumps(event.changes), event.user_agent,
                        event.request_id, prev, event.hash,
                    )
                )  # fmt: skip
                prev = event.hash
        cursor.execute("ANALYZE accounts_auditevent")
    AuditChainHead.objects.create(chain=str(organization_id), sequence=rows, hash=prev)
    return str(organization_id)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300, help="timed calls per operation, mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--verify-rows", type=int, default=0, help="also time audit_verify on a chain this long")
    args = parser.parse_args()
    settings.DEBUG = False  # as in production: no query log kept per statement
    if connection.vendor != "postgresql":
        sys.exit("Set DATABASE_URL to a PostgreSQL database (the benchmark is for PostgreSQL).")

    owner, member = setup()
    organization_id = owner.organization_id
    print(
        f"PostgreSQL {connection.pg_version // 10000}, server-side binding "
        f"{connection.settings_dict['OPTIONS'].get('server_side_binding')}; {args.rounds} rounds x {args.ops} ops "
        f"per mode (+{args.warmup} warm-up), one call at a time"
    )

    roles = (Role.ADMIN, Role.MEMBER)

    def create_key(n: int) -> None:
        with audit_actor(user=owner.user, ip_address="203.0.113.7", user_agent="bench/1.0"):
            api_key_create(membership=owner, name=f"bench key {n}")

    def change_role(n: int) -> None:
        with audit_actor(user=owner.user, ip_address="203.0.113.7", user_agent="bench/1.0"):
            membership_change_role(membership=owner, target_id=member.id, role=roles[n % 2])

    rows = [
        measure("api_key_create", create_key, organization_id, ops=args.ops, rounds=args.rounds, warmup=args.warmup),
        # An even number of calls per block, so each block starts from the member role.
        measure(
            "membership_change_role",
            change_role,
            organization_id,
            ops=args.ops + args.ops % 2,
            rounds=args.rounds,
            warmup=args.warmup + args.warmup % 2,
        ),
    ]
    report(rows)

    result = audit_verify(chain=str(organization_id))
    print(f"the bench's chain: {result.rows} events, verifies: {result.ok}")

    if args.verify_rows:
        t0 = time.perf_counter()
        chain = load_chain(args.verify_rows)
        load_s = time.perf_counter() - t0
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        result = audit_verify(chain=chain)
        verify_s = time.perf_counter() - t0
        print(
            f"audit_verify on one chain of {result.rows} rows: {verify_s:.1f} s ({result.rows / verify_s:,.0f} rows/s), "
            f"ok={result.ok}; peak RSS {rss_before:.0f} MB before, {peak_rss_mb():.0f} MB after (load took {load_s:.1f} s)"
        )


if __name__ == "__main__":
    main()
