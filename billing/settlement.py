"""Settle a turn: bill every provider call once at its model's price, release the reservation.

`turn_settle` runs after every turn authorized by billing.reservations.turn_authorize, whatever the
outcome of the call (answered, failed, stopped, interrupted). While a turn streams, its process
writes a heartbeat and the usage so far on the reservation (`reservations_record`); a reservation
whose heartbeat stopped (the process was killed, or lost the database for good) is settled from that
record by `reservation_settle_recorded`, exactly once: ledger rows are keyed by the provider call's
id, the same id the live process would bill, so whichever settles first bills each call and the
other bills nothing twice. `reservations_release_expired` stays as the backstop of the backstop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from accounts.models import ApiKey, Membership
from billing.alerts import budget_alerts_check, crosses
from billing.counters import counters_lock, counters_locked_in_id_order, period_counters
from billing.limits import limiter
from billing.models import LedgerEntry, Price, Reservation, ReservationStatus
from billing.money import ZERO
from billing.periods import period_start
from billing.reservations import TurnAuthorization, rate_limit_scopes
from billing.selectors import price_for
from llm.types import Usage

logger = logging.getLogger(__name__)


def _price_at(model: str, fallback: str, at: datetime) -> Price | None:
    return price_for(model, at) or (price_for(fallback, at) if fallback != model else None)


def turn_settle(
    *,
    authorization: TurnAuthorization,
    usages: Sequence[Usage],
    membership: Membership,
    api_key: ApiKey | None = None,
    conversation_id: UUID | None = None,
    message_id: UUID | None = None,
) -> Decimal:
    """Bill every provider call once, release the reservation, count the tokens per minute.

    Idempotent: ledger rows are keyed by the call id, and the reservation is released only once.
    Returns the turn's cost (all its calls, including ones billed by an earlier attempt).
    """
    call_ids = [u.call_id or f"{authorization.request_id}:{i}" for i, u in enumerate(usages)]
    new_entries, total = _settle(
        authorization=authorization,
        usages=usages,
        call_ids=call_ids,
        membership=membership,
        api_key=api_key,
        conversation_id=conversation_id,
        message_id=message_id,
    )
    tokens = sum(e.input_tokens + e.output_tokens + e.cached_input_tokens for e in new_entries)
    if tokens:
        limiter().record_tokens(rate_limit_scopes(membership=membership, api_key=api_key), tokens)
    return total


@transaction.atomic
def _settle(
    *,
    authorization: TurnAuthorization,
    usages: Sequence[Usage],
    call_ids: list[str],
    membership: Membership,
    api_key: ApiKey | None,
    conversation_id: UUID | None,
    message_id: UUID | None,
    status: str = ReservationStatus.SETTLED,
    only_if_open: bool = False,
) -> tuple[list[LedgerEntry], Decimal] | None:
    now = timezone.now()
    if authorization.created_at is None or not authorization.counter_ids:
        authorization = _authorization_of(authorization, membership=membership)
    # Releasing is one conditional UPDATE: only the first settlement of an open reservation releases it.
    released = Reservation.objects.filter(
        id=authorization.reservation_id, organization_id=membership.organization_id, status=ReservationStatus.OPEN
    ).update(status=status, closed_at=now)
    if not released and only_if_open:
        return None
    priced_at = authorization.created_at or now
    # A released reservation was never settled, so none of its calls is billed yet; otherwise look.
    already = (
        set()
        if released
        else set(LedgerEntry.objects.filter(request_id__in=call_ids).values_list("request_id", flat=True))
    )
    new_entries: list[LedgerEntry] = []
    for usage, call_id in zip(usages, call_ids, strict=True):
        if call_id in already:
            continue
        already.add(call_id)
        model = usage.model or authorization.model
        price = _price_at(model, authorization.model, priced_at)
        if price is None:
            # Only reachable if the price row was deleted mid-turn; bill at zero rather than lose the row.
            logger.error("No price for %s at %s; billing call %s at zero", model, priced_at, call_id)
            price = Price(model=model, is_free=True)
        entry = LedgerEntry(
            organization_id=membership.organization_id,
            membership=membership,
            user_email=membership.user.email,
            api_key=api_key,
            conversation_id=conversation_id,
            message_id=message_id,
            turn_request_id=authorization.request_id,
            request_id=call_id,
            provider=usage.provider,
            model=model,
            input_tokens=max(0, usage.input_tokens),
            output_tokens=max(0, usage.output_tokens),
            cached_input_tokens=max(0, usage.cached_input_tokens),
            input_per_mtok=price.input_unit,
            output_per_mtok=price.output_unit,
            cached_input_per_mtok=price.cached_input_unit,
            estimated=usage.estimated,
            created_at=now,
        )
        entry.cost = price.cost(
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cached_input_tokens=entry.cached_input_tokens,
        )
        new_entries.append(entry)
    new_cost = sum((e.cost for e in new_entries), ZERO)

    if new_entries:
        LedgerEntry.objects.bulk_create(new_entries)
    release = authorization.reserved_cost if released else ZERO
    if new_entries or release:
        # Last, so the counters stay locked only until the commit right after.
        _counters_add(authorization=authorization, membership=membership, spent=new_cost, released=release, now=now)
    if new_cost:
        crossing = [w.counter_id for w in authorization.budget_watch if crosses(w, new_cost)]
        if crossing:
            transaction.on_commit(lambda: budget_alerts_check(counter_ids=crossing), robust=True)

    if len(already) == len(new_entries):  # every call was billed just now
        return new_entries, new_cost
    total = sum(LedgerEntry.objects.filter(request_id__in=call_ids).values_list("cost", flat=True), ZERO)
    return new_entries, total


def _authorization_of(authorization: TurnAuthorization, *, membership: Membership) -> TurnAuthorization:
    """An authorization completed from its reservation (one built before it carried counters)."""
    reservation = Reservation.objects.filter(
        id=authorization.reservation_id, organization_id=membership.organization_id
    ).first()
    if reservation is None:
        return authorization
    return replace(
        authorization,
        created_at=reservation.created_at,
        counter_ids=tuple(i for i in (reservation.org_counter_id, reservation.member_counter_id) if i),
    )


def _counters_add(
    *, authorization: TurnAuthorization, membership: Membership, spent: Decimal, released: Decimal, now: datetime
) -> None:
    """Add the spend to this period's counters and release the reservation from the counters it is held on."""
    held = authorization.counter_ids
    if authorization.created_at is not None and period_start(authorization.created_at) == period_start(now):
        current = held
    else:  # a turn that crossed midnight UTC on the 1st: spend goes to the new month
        org, member = period_counters(
            organization_id=membership.organization_id, membership_id=membership.id, start=period_start(now)
        )
        current = (org.id, member.id)
    release = {"reserved": Greatest(F("reserved") - released, Value(ZERO))} if released else {}
    spend = {"spent": F("spent") + spent} if spent else {}
    if set(current) == set(held):
        counters_locked_in_id_order(held).update(**release, **spend)
        return
    # The old month's counters have the lower ids: released first, keeping the id order.
    if release:
        counters_locked_in_id_order(held).update(**release)
    if spend:
        counters_locked_in_id_order(current).update(**spend)


# --- the usage record, and turns whose process died ----------------------------------------------


def heartbeat_stale_seconds() -> float:
    """How long a reservation's heartbeat may be silent before its process counts as dead."""
    return float(getattr(settings, "BILLING_HEARTBEAT_STALE_SECONDS", 30))


def reservations_record(records: Sequence[tuple[UUID, dict]], *, now: datetime | None = None) -> int:
    """Write the heartbeat and usage record of running turns: one UPDATE for all (open ones only)."""
    if not records:
        return 0
    now = now or timezone.now()
    rows = [Reservation(id=reservation_id, heartbeat_at=now, recorded=record) for reservation_id, record in records]
    return Reservation.objects.filter(status=ReservationStatus.OPEN).bulk_update(rows, ["heartbeat_at", "recorded"])


def reservations_stale(*, now: datetime | None = None, limit: int = 200, older_than: float | None = None) -> list[UUID]:
    """Open reservations whose process has been silent too long (`older_than` seconds; by default
    BILLING_HEARTBEAT_STALE_SECONDS), oldest first."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=heartbeat_stale_seconds() if older_than is None else older_than)
    return list(
        Reservation.objects.filter(status=ReservationStatus.OPEN)
        .annotate(seen=Coalesce("heartbeat_at", "created_at"))
        .filter(seen__lt=cutoff)
        .order_by("seen")
        .values_list("id", flat=True)[:limit]
    )


def recorded_usages(record: dict) -> list[Usage]:
    """The provider calls of a usage record: the ones that ended, then the one that was streaming."""
    usages = [
        Usage(
            input_tokens=int(call.get("in", 0)),
            output_tokens=int(call.get("out", 0)),
            cached_input_tokens=int(call.get("cached", 0)),
            call_id=str(call["id"]),
            model=call.get("model", ""),
            provider=call.get("provider", ""),
            estimated=bool(call.get("estimated", False)),
        )
        for call in record.get("calls", ())
    ]
    current = record.get("current")
    if current:
        usages.append(
            Usage(
                input_tokens=int(current.get("in", 0)),
                output_tokens=int(current.get("out", 0)),
                call_id=str(current["id"]),
                model=current.get("model", ""),
                provider=current.get("provider", ""),
                estimated=True,
            )
        )
    return usages


@dataclass(frozen=True)
class Recovered:
    """A turn settled from its usage record."""

    reservation_id: UUID
    request_id: str
    organization_id: UUID
    user_id: UUID | None
    cost: Decimal
    usages: list[Usage]
    record: dict


def reservation_settle_recorded(reservation_id: UUID) -> Recovered | None:
    """Settle a dead process's turn from its usage record and release the rest of its reservation.

    Bills what was recorded: the calls that ended at their reported usage, the call that was
    streaming at its prompt plus the output tokens of the text it had delivered (estimated). Returns
    None when the reservation was settled meanwhile (by the live process, or another sweep).
    """
    reservation = (
        Reservation.objects.select_related("membership__user", "api_key")
        .filter(id=reservation_id, status=ReservationStatus.OPEN)
        .first()
    )
    if reservation is None:
        return None
    record = reservation.recorded or {}
    usages = recorded_usages(record)
    membership = reservation.membership
    if membership is None:  # the member was removed meanwhile: nothing to bill them to; release
        _release(reservation, status=ReservationStatus.RECOVERED)
        return Recovered(reservation.id, reservation.request_id, reservation.organization_id, None, ZERO, [], record)
    authorization = TurnAuthorization(
        reservation_id=reservation.id,
        request_id=reservation.request_id,
        model=reservation.model,
        max_output_tokens=reservation.max_output_tokens,
        reserved_cost=reservation.amount,
        created_at=reservation.created_at,
        counter_ids=tuple(i for i in (reservation.org_counter_id, reservation.member_counter_id) if i),
    )
    settled = _settle(
        authorization=authorization,
        usages=usages,
        call_ids=[u.call_id for u in usages],
        membership=membership,
        api_key=reservation.api_key,
        conversation_id=_uuid_or_none(record.get("conversation_id")),
        message_id=_uuid_or_none(record.get("message_id")),
        status=ReservationStatus.RECOVERED,
        only_if_open=True,
    )
    if settled is None:
        return None
    _entries, total = settled
    logger.warning("Settled turn %s from its usage record (its process stopped)", reservation.request_id)
    return Recovered(
        reservation.id, reservation.request_id, reservation.organization_id, membership.user_id, total, usages, record
    )


def _uuid_or_none(value) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _release(reservation: Reservation, *, status: str, now: datetime | None = None) -> bool:
    """Release an open reservation without billing (locks it, then its counters in id order)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Reservation.objects.select_for_update().filter(id=reservation.id, status=ReservationStatus.OPEN).first()
        if locked is None:
            return False
        counters = counters_lock([i for i in (locked.org_counter_id, locked.member_counter_id) if i])
        for counter in counters.values():
            counter.reserved = max(ZERO, counter.reserved - locked.amount)
            counter.save(update_fields=["reserved"])
        locked.status = status
        locked.closed_at = now
        locked.save(update_fields=["status", "closed_at"])
    return True


def reservations_release_expired(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Release reservations whose process died before settling them. Returns how many."""
    now = now or timezone.now()
    ids = list(
        Reservation.objects.filter(status=ReservationStatus.OPEN, expires_at__lt=now)
        .order_by("expires_at")
        .values_list("id", flat=True)[:limit]
    )
    released = 0
    for reservation_id in ids:
        if _release(Reservation(id=reservation_id), status=ReservationStatus.EXPIRED, now=now):
            released += 1
    if released:
        logger.warning("Released %d expired budget reservations", released)
    return released
