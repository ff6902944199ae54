"""The audit trail cannot be rewritten unnoticed: PostgreSQL refuses UPDATE and DELETE, the model
refuses save-over and delete, `audit_verify` names the first row that does not fit its chain, and
the retention purge shortens chains from the start only, in one transaction, leaving an event."""

import io
import os
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, models, transaction
from django.utils import timezone

from accounts.audit import GENESIS_HASH, PLATFORM_CHAIN, audit_actor, audit_record, chain_key
from accounts.audit_integrity import audit_purge, audit_verify
from accounts.errors import InvalidInput
from accounts.models import AuditChainHead, AuditEvent

ROOT = Path(__file__).resolve().parents[2]


def record(organization, count: int, *, at=None, action: str = "api_key.create") -> list[AuditEvent]:
    """Append `count` events to the organization's chain (None: the platform chain), optionally
    stamped at `at` (the clock audit_record reads)."""
    events = []
    with audit_actor(system="tests"):
        for n in range(count):
            if at is None:
                events.append(audit_record(action, organization=organization, target_type="thing", target_id=n))
            else:
                with mock.patch("django.utils.timezone.now", return_value=at + timedelta(microseconds=n)):
                    events.append(audit_record(action, organization=organization, target_type="thing", target_id=n))
    return events


def chain_rows(organization) -> list[AuditEvent]:
    events = AuditEvent.objects.filter(organization_id=getattr(organization, "pk", organization))
    if organization is None:
        events = AuditEvent.objects.filter(organization_id__isnull=True)
    return list(events.order_by("sequence"))


def raw(sql: str, params=()) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def tamper(sql: str, params=()) -> int:
    """What someone with the database's keys could do: the triggers off, one statement, back on."""
    raw("ALTER TABLE accounts_auditevent DISABLE TRIGGER ALL")
    try:
        return raw(sql, params)
    finally:
        raw("ALTER TABLE accounts_auditevent ENABLE TRIGGER ALL")


def verify_command() -> str:
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue()


def broken_command(*args) -> str:
    with pytest.raises(CommandError) as caught:
        call_command("audit_verify", *args, stdout=io.StringIO(), stderr=io.StringIO())
    return str(caught.value)


@pytest.fixture
def three_chains(org_a, org_b):
    """Five events in each of A's and B's chains and in the platform chain."""
    record(org_a.organization, 5)
    record(org_b.organization, 5)
    record(None, 5, action="price.change")
    return org_a.organization, org_b.organization


# --- Append-only ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_postgresql_refuses_update_and_delete_by_raw_sql(three_chains):
    event = chain_rows(three_chains[0])[0]
    for sql in (
        "UPDATE accounts_auditevent SET action = 'x.y' WHERE id = %s",
        "DELETE FROM accounts_auditevent WHERE id = %s",
    ):
        with pytest.raises(DatabaseError, match="audit_append_only"), transaction.atomic():
            raw(sql, [event.id])
    assert AuditEvent.objects.get(pk=event.pk).action == event.action != "x.y"


@pytest.mark.django_db
def test_the_model_refuses_and_the_trigger_stops_what_gets_past_it(three_chains):
    event = chain_rows(three_chains[0])[0]
    action = event.action
    event.action = "x.y"
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        event.delete()
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x.y")
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    # A plain Django queryset (no refusal of its own) still meets the PostgreSQL trigger.
    plain = models.QuerySet(AuditEvent).filter(pk=event.pk)
    with pytest.raises(DatabaseError, match="audit_append_only"), transaction.atomic():
        plain.update(action="x.y")
    with pytest.raises(DatabaseError, match="audit_append_only"), transaction.atomic():
        plain._raw_delete(plain.db)
    assert AuditEvent.objects.get(pk=event.pk).action == action
    assert audit_verify().ok


# --- Verification -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_intact_log_of_several_chains_verifies(three_chains):
    result = audit_verify()
    assert result.ok, result.breaks
    assert result.chains == AuditChainHead.objects.count() >= 3
    assert result.rows == AuditEvent.objects.count() >= 15
    out = verify_command()
    assert f"{result.chains} chains, {result.rows} rows checked" in out
    one = audit_verify(chain=str(three_chains[0].pk))
    assert one.ok and one.chains == 1 and one.rows == len(chain_rows(three_chains[0]))
    out = io.StringIO()
    call_command("audit_verify", "--organization", three_chains[1].slug, stdout=out)
    assert f"1 chains, {len(chain_rows(three_chains[1]))} rows checked" in out.getvalue()


@pytest.mark.django_db
def test_a_row_changed_with_the_trigger_disabled_is_named_even_when_a_later_one_changed_too(three_chains):
    organization = three_chains[0]
    rows = chain_rows(organization)
    first, later = rows[2], rows[4]
    raw("ALTER TABLE accounts_auditevent DISABLE TRIGGER ALL")
    raw("UPDATE accounts_auditevent SET target_label = 'forged' WHERE id = %s", [later.id])
    raw('UPDATE accounts_auditevent SET changes = \'{"role": ["member", "owner"]}\' WHERE id = %s', [first.id])
    raw("ALTER TABLE accounts_auditevent ENABLE TRIGGER ALL")

    result = audit_verify()
    assert len(result.breaks) == 1
    (problem,) = result.breaks
    assert (problem.event_id, problem.sequence, problem.chain, problem.problem) == (
        first.id,
        first.sequence,
        str(organization.pk),
        "hash",
    )
    message = broken_command()
    assert str(first.id) in message and f"sequence {first.sequence}" in message and str(organization.pk) in message
    assert str(later.id) not in message
    # The other chains are intact, and checking one of them alone passes.
    call_command("audit_verify", "--organization", three_chains[1].slug, stdout=io.StringIO())
    assert str(first.id) in broken_command("--organization", str(organization.pk))


@pytest.mark.django_db
def test_a_platform_row_changed_is_found(three_chains):
    rows = chain_rows(None)
    tamper("UPDATE accounts_auditevent SET actor_label = 'someone else' WHERE id = %s", [rows[1].id])
    message = broken_command()
    assert str(rows[1].id) in message and PLATFORM_CHAIN in message


@pytest.mark.django_db
def test_a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link(three_chains):
    from accounts.audit import event_hash

    rows = chain_rows(three_chains[1])
    target = rows[1]
    target.target_label = "forged"
    forged = event_hash(target, target.prev_hash)
    tamper("UPDATE accounts_auditevent SET target_label = 'forged', hash = %s WHERE id = %s", [forged, target.id])
    (problem,) = audit_verify().breaks
    assert (problem.event_id, problem.problem) == (rows[2].id, "prev_hash")


@pytest.mark.django_db
def test_a_deleted_middle_row_is_a_gap(three_chains):
    rows = chain_rows(three_chains[0])
    tamper("DELETE FROM accounts_auditevent WHERE id = %s", [rows[2].id])
    (problem,) = audit_verify().breaks
    assert (problem.event_id, problem.sequence, problem.problem) == (rows[3].id, rows[3].sequence, "gap")
    assert f"sequence {rows[2].sequence} missing" in problem.detail
    assert str(rows[3].id) in broken_command()


@pytest.mark.django_db
def test_a_truncated_tail_is_detected(three_chains):
    rows = chain_rows(three_chains[1])
    tamper("DELETE FROM accounts_auditevent WHERE id IN (%s, %s)", [rows[-1].id, rows[-2].id])
    (problem,) = audit_verify().breaks
    assert (problem.chain, problem.problem, problem.event_id, problem.sequence) == (
        str(three_chains[1].pk),
        "truncated",
        None,
        rows[-2].sequence,
    )
    assert str(rows[-3].id) in problem.detail
    message = broken_command()
    assert f"sequence {rows[-2].sequence}" in message and str(three_chains[1].pk) in message


@pytest.mark.django_db
def test_a_whole_chain_deleted_and_events_without_a_head_are_detected(three_chains):
    organization_a, organization_b = three_chains
    tamper("DELETE FROM accounts_auditevent WHERE organization_id = %s", [organization_a.pk])
    AuditChainHead.objects.filter(chain=str(organization_b.pk)).delete()
    problems = {problem.chain: problem for problem in audit_verify().breaks}
    assert problems[str(organization_a.pk)].problem == "truncated"
    assert problems[str(organization_b.pk)].problem == "no_head"
    assert problems[str(organization_b.pk)].event_id == chain_rows(organization_b)[0].id


@pytest.mark.django_db
def test_an_event_moved_to_another_organization_is_named(three_chains):
    organization_a, organization_b = three_chains
    moved = chain_rows(organization_a)[-1]
    tamper("UPDATE accounts_auditevent SET organization_id = %s WHERE id = %s", [organization_b.pk, moved.id])
    problems = {problem.chain: problem for problem in audit_verify().breaks}
    assert set(problems) == {str(organization_a.pk), str(organization_b.pk)}
    assert problems[str(organization_a.pk)].problem == "truncated"
    in_b = problems[str(organization_b.pk)]
    assert (in_b.event_id, in_b.problem) == (moved.id, "moved")
    assert str(organization_a.pk) in in_b.detail


@pytest.mark.django_db
def test_a_row_appended_past_the_head_is_detected(three_chains):
    organization = three_chains[0]
    last = chain_rows(organization)[-1]
    AuditChainHead.objects.filter(chain=str(organization.pk)).update(sequence=last.sequence - 1)
    (problem,) = audit_verify().breaks
    assert (problem.event_id, problem.problem) == (last.id, "beyond_head")


def _close_thread_connection():
    connections.close_all()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_appends_to_one_chain_stay_contiguous(organization_factory):
    organization = organization_factory()
    start = AuditChainHead.objects.filter(chain=chain_key(organization.pk)).values_list("sequence", flat=True).first()
    start = start or 0
    threads, per_thread, errors = 6, 8, []
    barrier = threading.Barrier(threads)

    def append():
        try:
            barrier.wait()
            for n in range(per_thread):
                with transaction.atomic(), audit_actor(system="tests"):
                    audit_record("budget.update", organization=organization, target_type="budget", target_id=n)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            _close_thread_connection()

    workers = [threading.Thread(target=append) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    rows = chain_rows(organization)
    assert [row.sequence for row in rows] == list(range(1, start + threads * per_thread + 1))
    head = AuditChainHead.objects.get(chain=str(organization.pk))
    assert (head.sequence, head.hash) == (rows[-1].sequence, rows[-1].hash)
    result = audit_verify(chain=str(organization.pk))
    assert result.ok and result.rows == start + threads * per_thread


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_manage_py_audit_verify_exits_non_zero_naming_the_row(organization_factory):
    organization = organization_factory()
    record(organization, 4)
    database = connection.settings_dict["NAME"]
    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + f"/{database}"
    env = {**os.environ, "DATABASE_URL": url}

    def run():
        return subprocess.run(
            [sys.executable, "manage.py", "audit_verify"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert "Audit log intact" in verify_command()  # (a command that returns exits 0)
    victim = chain_rows(organization)[1]
    tamper("UPDATE accounts_auditevent SET ip_address = '203.0.113.9' WHERE id = %s", [victim.id])
    broken = run()
    assert broken.returncode != 0
    assert str(victim.id) in broken.stderr and f"sequence {victim.sequence}" in broken.stderr


# --- Retention --------------------------------------------------------------------------------


@pytest.fixture
def aged(db):
    """Two chains of their own (organization ids, as events outlive their organization). A: 4
    events 100 days old then 3 new; B: 2 old, 1 new, then one stamped old again (a clock step
    back: it sits after a new row, so it must stay); platform: 3 old (after whatever it had)."""
    old = timezone.now() - timedelta(days=100)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    record(a, 4, at=old)
    record(a, 3)
    record(b, 2, at=old)
    record(b, 1)
    record(b, 1, at=old)
    record(None, 3, at=old, action="price.change")
    return a, b


@pytest.mark.django_db
def test_purge_removes_only_the_old_prefix_and_leaves_an_event(aged):
    a, b = aged
    cutoff_old = timezone.now() - timedelta(days=30)
    before = {key: chain_rows(key) for key in (a, b, None)}
    old_before = {
        key: [row for row in rows if row.created_at < cutoff_old and row.sequence <= _prefix(rows, cutoff_old)]
        for key, rows in before.items()
    }
    result = audit_purge(older_than_days=30)

    for key, rows in before.items():
        kept = chain_rows(key)
        gone = {row.id for row in rows} - {row.id for row in kept}
        assert gone == {row.id for row in old_before[key]}
        head = AuditChainHead.objects.get(chain=chain_key(key))
        assert head.purged_through == (old_before[key][-1].sequence if old_before[key] else 0)
    # B's late old row (after a new one) stays: purging never leaves a hole.
    assert any(row.created_at < cutoff_old for row in chain_rows(b))
    assert result.deleted[a] == 4 and result.deleted[b] == 2

    event = AuditEvent.objects.get(action="audit.purge")
    assert (
        event.organization_id is None and event.actor_type == "system" and event.actor_label == "manage.py audit_purge"
    )
    assert event.changes["deleted"][1] == result.deleted
    assert event.changes["cutoff"][1] == result.cutoff.isoformat(timespec="microseconds")
    assert event.changes["purged_through"][1][a] == old_before[a][-1].sequence
    assert audit_verify().ok
    # The trigger is lifted for the purge's deletes only: later in the same transaction it refuses again.
    with pytest.raises(DatabaseError, match="audit_append_only"), transaction.atomic():
        raw("DELETE FROM accounts_auditevent WHERE id = %s", [event.id])
    # The first kept row links to the purged one.
    first_kept = chain_rows(a)[0]
    assert first_kept.prev_hash == AuditChainHead.objects.get(chain=a).purged_hash != GENESIS_HASH

    # Again: nothing more is old, the log still verifies, and a second event records the no-op.
    again = audit_purge(older_than_days=30)
    assert again.total == 0 and AuditEvent.objects.filter(action="audit.purge").count() == 2
    assert audit_verify().ok


def _prefix(rows, cutoff) -> int:
    through = 0
    for row in rows:
        if row.created_at >= cutoff:
            break
        through = row.sequence
    return through


@pytest.mark.django_db
def test_appends_after_a_purge_still_verify(aged):
    a, _ = aged
    audit_purge(older_than_days=30)
    record(a, 2)
    assert audit_verify().ok
    # Purging everything of a chain leaves a head that still accounts for every row.
    audit_purge(older_than_days=1, now=timezone.now() + timedelta(days=2))
    assert audit_verify().ok


@pytest.mark.django_db
def test_a_purge_that_fails_midway_changes_nothing(aged):
    snapshot = sorted(AuditEvent.objects.values_list("id", flat=True))
    heads = list(AuditChainHead.objects.order_by("chain").values())
    with (
        mock.patch("accounts.audit_integrity.audit_record", side_effect=RuntimeError("disk full")),
        pytest.raises(RuntimeError),
    ):
        audit_purge(older_than_days=30)
    assert sorted(AuditEvent.objects.values_list("id", flat=True)) == snapshot
    assert list(AuditChainHead.objects.order_by("chain").values()) == heads
    assert audit_verify().ok


@pytest.mark.django_db
def test_a_purge_refuses_a_broken_chain(aged):
    a, _ = aged
    rows = chain_rows(a)
    tamper("UPDATE accounts_auditevent SET action = 'x.y' WHERE id = %s", [rows[1].id])
    snapshot = AuditEvent.objects.count()
    with pytest.raises(InvalidInput, match=str(rows[1].id)):
        audit_purge(older_than_days=30)
    assert AuditEvent.objects.count() == snapshot


@pytest.mark.django_db
def test_the_purge_command_uses_the_setting_and_refuses_without_a_retention(aged, settings):
    settings.AUDIT_RETENTION_DAYS = None
    with pytest.raises(CommandError, match="AUDIT_RETENTION_DAYS"):
        call_command("audit_purge", stdout=io.StringIO())
    assert not AuditEvent.objects.filter(action="audit.purge").exists()
    with pytest.raises(CommandError):
        call_command("audit_purge", "--days", "0", stdout=io.StringIO())

    settings.AUDIT_RETENTION_DAYS = 200
    out = io.StringIO()
    call_command("audit_purge", stdout=out)
    assert "Purged 0 audit events" in out.getvalue()

    out = io.StringIO()
    call_command("audit_purge", "--days", "30", stdout=out)
    assert "Purged" in out.getvalue() and aged[0] in out.getvalue()
    assert AuditEvent.objects.filter(action="audit.purge").count() == 2
    assert "Audit log intact" in verify_command()
