"""The audit trail's integrity: verify the hash chains, and purge old events without breaking them.

`audit_verify` walks every chain (one `AuditChainHead` per organization, and "platform"), streaming
its events in sequence order, and recomputes each row's hash (`accounts.audit.event_hash`). A chain
breaks at the first row that does not fit: its hash is not that of its fields (a field was
rewritten, or the row moved between organizations), it does not link to the previous row's hash, its
sequence skips one (a deleted row) or repeats one, or it lies past the head; a chain whose last row
is not the head's sequence and hash lost its tail. Events of a chain with no head are a break too.

`audit_purge` is the retention purge, the only way rows leave the table: per chain, oldest first, it
deletes the prefix of events older than the cutoff (never a hole), moves the head's
`purged_through` / `purged_hash` to the last purged row, so the first kept row still links, and
records an `audit.purge` event, all in one transaction. It refuses to purge a chain that does not
verify (the evidence would go with it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pgtrigger
from django.db import connection, transaction
from django.db.models import Max, Min, QuerySet
from django.utils import timezone

from accounts.audit import GENESIS_HASH, PLATFORM_CHAIN, AuditContext, audit_record, chain_key, event_hash
from accounts.errors import InvalidInput
from accounts.models import AuditChainHead, AuditEvent

BATCH = 2000
APPEND_ONLY_TRIGGER = "accounts.AuditEvent:audit_append_only"
PURGE_ACTOR = "manage.py audit_purge"
# A row whose hash fails is tried under each other chain's organization to tell a moved row from a
# rewritten one; past this many chains the diagnosis is skipped (the row is reported as rewritten).
_MOVED_DIAGNOSIS_MAX_CHAINS = 10_000


@dataclass(frozen=True)
class Break:
    """The first row of a chain that does not fit. `event_id` is None for a row that is missing
    (a truncated tail: `sequence` is then the first missing one)."""

    chain: str
    problem: str  # hash | moved | prev_hash | gap | duplicate | beyond_head | head_hash | truncated | no_head
    detail: str
    event_id: Any = None
    sequence: int | None = None
    created_at: datetime | None = None

    def __str__(self) -> str:
        row = f"row {self.event_id}" if self.event_id else "missing row"
        return f"chain {self.chain}: {row} (sequence {self.sequence}): {self.detail}"


@dataclass
class VerifyResult:
    chains: int = 0
    rows: int = 0
    breaks: list[Break] = field(default_factory=list)  # the first break of each broken chain

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first(self) -> Break | None:
        """The earliest broken row of all chains (by its time; a missing row sorts last)."""
        if not self.breaks:
            return None
        far = timezone.now() + timedelta(days=365_000)
        return min(self.breaks, key=lambda b: (b.created_at or far, b.chain, b.sequence or 0))


_COLUMNS = [field.attname for field in AuditEvent._meta.concrete_fields]


def _chain_events(chain: str) -> QuerySet:
    if chain == PLATFORM_CHAIN:
        events = AuditEvent.objects.filter(organization_id__isnull=True)
    else:
        events = AuditEvent.objects.filter(organization_id=chain)
    return events.order_by("sequence", "created_at", "id")


def _moved_from(event, chains: list[str]) -> str | None:
    """The chain whose organization this row's hash was computed for, if not its own."""
    if len(chains) > _MOVED_DIAGNOSIS_MAX_CHAINS:
        return None
    for other in chains:
        if other == chain_key(event.organization_id):
            continue
        elsewhere = event._replace(organization_id=None if other == PLATFORM_CHAIN else other)
        if event_hash(elsewhere, event.prev_hash) == event.hash:
            return other
    return None


def _walk(head: AuditChainHead, chains: list[str], *, through: int | None = None) -> tuple[int, Break | None]:
    """(rows checked, first break) of one chain; `through` stops after that sequence (a purge's
    prefix: the tail checks are skipped)."""
    chain = head.chain
    expected = head.purged_through + 1
    prev = head.purged_hash or GENESIS_HASH
    events = _chain_events(chain)
    if through is not None:
        events = events.filter(sequence__lte=through)
    rows = 0
    last = None

    def broken(event, problem: str, detail: str) -> tuple[int, Break]:
        return rows, Break(chain, problem, detail, event.id, event.sequence, event.created_at)

    # Rows as named tuples of the model's columns (event_hash reads attributes only): no model
    # instance per row, a third less time on a long chain.
    for event in events.values_list(*_COLUMNS, named=True).iterator(chunk_size=BATCH):
        rows += 1
        if event_hash(event, event.prev_hash) != event.hash:
            moved = _moved_from(event, chains)
            if moved is not None:
                return broken(event, "moved", f"belongs to chain {moved} (its organization was changed)")
            return broken(event, "hash", "its hash does not match its fields (the row was changed)")
        if event.sequence < expected:
            if last is not None and event.sequence == last.sequence:
                return broken(event, "duplicate", f"repeats sequence {event.sequence} (row {last.id} has it)")
            return broken(
                event, "duplicate", f"sequence {event.sequence} is at or before the purge point {head.purged_through}"
            )
        if event.sequence > head.sequence:
            return broken(
                event,
                "beyond_head",
                f"lies past the chain head (sequence {head.sequence}): not appended by audit_record",
            )
        if event.sequence > expected:
            missing = f"{expected}" if event.sequence == expected + 1 else f"{expected}–{event.sequence - 1}"
            return broken(event, "gap", f"sequence {missing} missing before it (deleted rows)")
        if event.prev_hash != prev:
            return broken(event, "prev_hash", "does not link to the previous row's hash (a row before it was replaced)")
        prev, expected, last = event.hash, expected + 1, event
    if through is not None:
        return rows, None
    if last is None and head.sequence > head.purged_through:
        missing = f"{expected}–{head.sequence}" if head.sequence > expected else f"{expected}"
        return rows, Break(
            chain, "truncated", f"has no rows, its head is at {head.sequence}: {missing} missing", None, expected
        )
    if last is not None and last.sequence < head.sequence:
        missing = f"{expected}–{head.sequence}" if head.sequence > expected else f"{expected}"
        detail = f"ends at sequence {last.sequence} (row {last.id}), its head is at {head.sequence}: {missing} missing"
        return rows, Break(chain, "truncated", detail, None, expected)
    if last is not None and last.hash != head.hash:
        return rows, Break(
            chain, "head_hash", "the last row's hash is not the chain head's", last.id, last.sequence, last.created_at
        )
    return rows, None


def _headless_chains(heads: list[AuditChainHead]) -> list[str]:
    """Chains that have events but no head (their events were inserted outside audit_record)."""
    org_ids = [head.chain for head in heads if head.chain != PLATFORM_CHAIN]
    orphans = AuditEvent.objects.exclude(organization_id__in=org_ids) if org_ids else AuditEvent.objects.all()
    if any(head.chain == PLATFORM_CHAIN for head in heads):
        orphans = orphans.filter(organization_id__isnull=False)
    found = orphans.order_by().values_list("organization_id", flat=True).distinct()
    return sorted(chain_key(org_id) for org_id in found)


@contextlib.contextmanager
def _snapshot() -> Iterator[None]:
    """One consistent view of heads and events (REPEATABLE READ on PostgreSQL when not already in
    a transaction, so appends during a long walk are not mistaken for a longer chain)."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def audit_verify(*, chain: str | None = None) -> VerifyResult:
    """Check every chain (or one: an organization id, or "platform"); the first break of each.

    Streams each chain's events in batches, so memory stays bounded on any number of rows."""
    result = VerifyResult()
    with _snapshot():
        heads = list(AuditChainHead.objects.order_by("chain"))
        all_chains = [head.chain for head in heads]
        if chain is not None:
            chain = str(chain)
            heads = [head for head in heads if head.chain == chain]
            headless = [] if heads or not _chain_events(chain).exists() else [chain]
        else:
            headless = _headless_chains(heads)
        for head in heads:
            rows, problem = _walk(head, all_chains)
            result.chains += 1
            result.rows += rows
            if problem is not None:
                result.breaks.append(problem)
        for orphan in headless:
            event = _chain_events(orphan).first()
            count = _chain_events(orphan).count()
            result.chains += 1
            result.rows += count
            result.breaks.append(
                Break(
                    orphan,
                    "no_head",
                    f"{count} events of a chain that has no head",
                    event.id,
                    event.sequence,
                    event.created_at,
                )
            )
    return result


# --- Retention --------------------------------------------------------------------------------


@dataclass
class PurgeResult:
    cutoff: datetime
    deleted: dict[str, int] = field(default_factory=dict)  # chain → rows deleted (chains that lost rows)
    event: AuditEvent | None = None

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def _purge_point(head: AuditChainHead, cutoff: datetime) -> int:
    """The last sequence of the chain's prefix of rows older than the cutoff (only a prefix goes,
    so a late row with an early timestamp never leaves a hole)."""
    kept = _chain_events(head.chain).filter(sequence__gt=head.purged_through)
    first_new = kept.filter(created_at__gte=cutoff).aggregate(first=Min("sequence"))["first"]
    if first_new is not None:
        return first_new - 1
    return kept.aggregate(last=Max("sequence"))["last"] or head.purged_through


@contextlib.contextmanager
def _append_only_lifted() -> Iterator[None]:
    """`pgtrigger.ignore(APPEND_ONLY_TRIGGER)` for the enclosing transaction, set by a statement
    of its own.

    pgtrigger.ignore prefixes every query in its block with `SELECT set_config(...);`, and
    PostgreSQL refuses two commands in one prepared statement, which is what server-side binding
    (settings: DATABASE_SERVER_SIDE_BINDING, on by default) makes of every query with parameters.
    So the same transaction-local `pgtrigger.ignore` value is set once before the deletes and
    cleared after them; the trigger's own check (`_pgtrigger_should_ignore`) reads it."""
    if connection.vendor != "postgresql":
        yield
        return
    if not connection.in_atomic_block:
        raise RuntimeError("The append-only trigger is only lifted inside a transaction.")
    ((model, trigger),) = pgtrigger.registered(APPEND_ONLY_TRIGGER)
    pgid = trigger.get_pgid(model)
    ignored = "{" + f"{model._meta.db_table}:{pgid},{pgid}" + "}"  # as pgtrigger.ignore sets it
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('pgtrigger.ignore', %s, true)", [ignored])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('pgtrigger.ignore', '{}', true)")


def _raw_delete(events: QuerySet) -> int:
    """Delete past the model's refusal: a raw DELETE of the queryset (used by the purge only)."""
    return events._raw_delete(events.db)


def audit_purge(*, older_than_days: int, now: datetime | None = None) -> PurgeResult:
    """Delete the events older than `older_than_days` days, chain by chain, oldest first.

    One transaction: the rows, the heads' purge points and the `audit.purge` event (platform
    chain, system actor, the cutoff and the count per chain) commit together or not at all. Each
    head is locked while its chain is purged, so appends to it wait for the commit. A chain that
    does not verify is not purged (InvalidInput naming its first broken row)."""
    if isinstance(older_than_days, bool) or not isinstance(older_than_days, int) or older_than_days < 1:
        raise InvalidInput("The retention must be a whole number of days, at least 1.")
    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    result = PurgeResult(cutoff=cutoff)
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    with transaction.atomic():
        chains = list(AuditChainHead.objects.order_by("chain").values_list("chain", flat=True))
        for chain in chains:
            head = AuditChainHead.objects.select_for_update().get(chain=chain)
            through = _purge_point(head, cutoff)
            if through <= head.purged_through:
                continue
            _, problem = _walk(head, chains, through=through)
            if problem is not None:
                raise InvalidInput(f"Not purged: the audit log is broken at {problem}. Run manage.py audit_verify.")
            last = _chain_events(chain).get(sequence=through)
            deleted = 0
            with _append_only_lifted():
                for start in range(head.purged_through + 1, through + 1, BATCH):
                    end = min(start + BATCH - 1, through)
                    deleted += _raw_delete(_chain_events(chain).filter(sequence__gte=start, sequence__lte=end))
            before[chain], after[chain] = head.purged_through, through
            head.purged_through, head.purged_hash = through, last.hash
            head.save(update_fields=["purged_through", "purged_hash"])
            result.deleted[chain] = deleted
        result.event = audit_record(
            "audit.purge",
            organization=None,
            target_type="audit_log",
            target_label=f"events before {cutoff.isoformat(timespec='seconds')}",
            changes={
                "older_than_days": [None, older_than_days],
                "cutoff": [None, cutoff.isoformat(timespec="microseconds")],
                "deleted": [None, dict(result.deleted)],
                "purged_through": [before, after],
            },
            actor=AuditContext(system=PURGE_ACTOR),
        )
    return result
