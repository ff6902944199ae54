"""Turns whose process died (killed, crashed, or cut off from the database for good).

While a turn streams, its process writes the usage so far and a heartbeat on the turn's reservation
about once a second (conversations.engine). When the heartbeat stops, `turns_recover` — a Celery
beat task every 15 s, and the check a new turn makes on a conversation that still shows an
answer streaming — settles the turn from that record, once (billing.settlement.
reservation_settle_recorded), releases the rest of its reservation, writes the call-log row of the
provider call that was cut off, and ends its answer `interrupted` with the cost billed. So the
answer's final state, the ledger and the call log agree, and a dead process's reservations are
released within a minute (30 s of silence + at most 15 s to the next sweep).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import LedgerEntry, Reservation, ReservationStatus
from billing.settlement import Recovered, heartbeat_stale_seconds, reservation_settle_recorded, reservations_stale
from config import metrics
from conversations.models import Message, Status
from llm.calllog import Attempt, call_log_write_sync
from llm.models import ProviderCall

logger = logging.getLogger(__name__)

COST_QUANTUM = Decimal("0.00000001")
LOST = "The answer was interrupted (the server stopped)."


def turns_recover(*, limit: int = 200, older_than: float | None = None) -> int:
    """Settle every turn whose process has been silent too long; end its answer. Returns how many.

    `older_than=0` (start-up of the only process): every open turn, whatever its heartbeat.
    """
    recovered = 0
    for reservation_id in reservations_stale(limit=limit, older_than=older_than):
        try:
            message = Message.objects.filter(reservation_id=reservation_id).values_list("id", flat=True).first()
            if answer_end_lost(message_id=message, reservation_id=reservation_id, stale_only=False):
                recovered += 1
        except Exception:
            logger.exception("recovering the turn of reservation %s failed", reservation_id)
    metrics.settlement_recovered(recovered)
    return recovered


def answer_end_lost(*, message_id: UUID | None, reservation_id: UUID | None, stale_only: bool = True) -> bool:
    """Bill a lost turn from its record and end its answer (if it has one) as `interrupted`.

    `stale_only`: leave the turn alone while its process still writes its heartbeat (a live process
    retrying its settlement after a database blip finishes the turn itself). False when it was left
    alone for that reason.
    """
    recovered = None
    if reservation_id is not None:
        open_reservation = Reservation.objects.filter(id=reservation_id, status=ReservationStatus.OPEN)
        if stale_only:
            cutoff = timezone.now() - timedelta(seconds=heartbeat_stale_seconds())
            live = open_reservation.annotate(seen=Coalesce("heartbeat_at", "created_at")).filter(seen__gte=cutoff)
            if live.exists():
                return False
        recovered = reservation_settle_recorded(reservation_id)
        if recovered is not None:
            _call_log_lost(recovered)
    if message_id is not None:
        _message_end(message_id, recovered)
    return True


def _message_end(message_id: UUID, recovered: Recovered | None) -> None:
    now = timezone.now()
    message = Message.objects.filter(id=message_id).only("id", "reservation_id").first()
    if message is None:
        return
    fields = {
        "status": Status.INTERRUPTED,
        "error_code": "interrupted",
        "error_message": LOST,
        "updated_at": now,
        "finished_at": now,
    }
    # What was billed for this answer, whoever billed it (this recovery, or the live process earlier).
    cost = LedgerEntry.objects.filter(message_id=message_id).aggregate(total=Sum("cost"))["total"]
    if cost is not None:
        fields["cost"] = Decimal(cost).quantize(COST_QUANTUM)
    if recovered is not None and recovered.usages:
        fields["input_tokens"] = sum(u.input_tokens for u in recovered.usages)
        fields["output_tokens"] = sum(u.output_tokens for u in recovered.usages)
    Message.objects.filter(id=message_id, status=Status.STREAMING).update(**fields)


def _call_log_lost(recovered: Recovered) -> None:
    """The call-log rows the dead process never wrote (the call it was streaming, at least)."""
    call_ids = [u.call_id for u in recovered.usages]
    logged = set(ProviderCall.objects.filter(call_id__in=call_ids).values_list("call_id", flat=True))
    now = timezone.now()
    for usage in recovered.usages:
        if usage.call_id in logged:
            continue
        attempt = Attempt(
            request_id=recovered.request_id,
            call_id=usage.call_id,
            organization_id=recovered.organization_id,
            user_id=recovered.user_id,
            provider=usage.provider,
            model=usage.model,
            vendor_model="",
            attempt=1,
            round=1,
            started_at=now,
            prompt_sha256="",
            usage=usage,
            status="error",
            finish_reason="error",
            error_class="ProcessLost",
            error_message="The process streaming this call stopped; billed from its usage record.",
        )
        try:
            call_log_write_sync(attempt)
        except Exception:
            logger.exception("could not write the call log of the lost call %s", usage.call_id)
