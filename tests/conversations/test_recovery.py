"""Money under faults: the usage record of a running turn, retried settlement, turns of dead processes.

The fake provider's reported usage is the truth a bill is checked against; a turn whose process died
is billed from what its process recorded (estimated), exactly once, and its reservation released.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError
from django.utils import timezone

from billing.models import LedgerEntry, PeriodSpend, Reservation, ReservationStatus
from billing.settlement import reservations_record, turn_settle
from config import metrics
from conversations import engine, generation, recovery
from conversations import hub as hub_module
from conversations.models import Message, Status
from conversations.turns import turn_start
from llm import chat as llm_chat
from llm.models import ProviderCall
from llm.tokens import count_messages
from llm.types import ChatRequest, Usage
from llm.types import Message as LLMMessage
from tests.conversations.conftest import wait_idle
from tests.fakeprovider.script import reply

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

CLAUDE = "claude-haiku-4-5"


def _request(content: str, model: str = CLAUDE, **extra) -> ChatRequest:
    return ChatRequest(
        model=model, messages=(LLMMessage(role="user", content=content),), request_id=f"v1-{uuid.uuid4()}", **extra
    )


# --- reservations are an upper bound of what a vendor can bill ----------------------------------


def test_reservation_bounds_the_prompt_for_vendors_without_our_tokenizer(org_a, fake_provider):
    content = "Grüße aus Köln — ünïcödé ✓ " * 20  # many bytes per tiktoken token
    request = _request(content, max_output_tokens=50)
    prepared = engine.turn_prepare(caller=engine.Caller(membership=org_a.member), request=request)
    reservation = Reservation.objects.get(id=prepared.authorization.reservation_id)
    naive = count_messages(request.messages, CLAUDE)
    utf8 = len(content.encode("utf-8"))
    # Anthropic's tokenizer is not Parley's: the bound is the UTF-8 size plus the chat framing.
    assert reservation.prompt_tokens >= utf8 > naive
    assert prepared.prompt_tokens[CLAUDE] == reservation.prompt_tokens


def test_reservation_uses_the_exact_count_for_openai(org_a, fake_provider):
    request = _request("Hello there, how are you today?", model="gpt-5.2-instant", max_output_tokens=50)
    prepared = engine.turn_prepare(caller=engine.Caller(membership=org_a.member), request=request)
    reservation = Reservation.objects.get(id=prepared.authorization.reservation_id)
    assert reservation.prompt_tokens == count_messages(request.messages, "gpt-5.2-instant")


# --- the usage record, and settlement that is retried ---------------------------------------------


async def _stream(org_a, request: ChatRequest) -> tuple[engine.BilledStream, engine.QueueSink]:
    prepared = await engine.turn_prepare_async(caller=engine.Caller(membership=org_a.member, entry="v1"), request=request)
    sink = engine.QueueSink()
    billed = engine.BilledStream(prepared, sink)
    billed.start()
    return billed, sink


async def _recorded(reservation_id, *, tokens: int = 1) -> Reservation:
    """The reservation once its record counts at least `tokens` output tokens of the call streaming."""
    async with asyncio.timeout(10):
        while True:
            reservation = await database_sync_to_async(Reservation.objects.get)(id=reservation_id)
            if reservation.recorded.get("current", {}).get("out", 0) >= tokens:
                return reservation
            await asyncio.sleep(0.05)


async def test_a_running_call_records_its_usage_and_heartbeat(org_a, fake_provider):
    fake_provider.anthropic.script([reply(*(f"word{i} " for i in range(30)), usage=(31, 60), delta_delay=0.1)])
    billed, _sink = await _stream(org_a, _request("Tell me something"))
    first = await _recorded(billed.prepared.authorization.reservation_id)
    # the first text is recorded at once; a second later the record has grown, with a newer heartbeat
    reservation = await _recorded(first.id, tokens=first.recorded["current"]["out"] + 1)
    current = reservation.recorded["current"]
    assert current["model"] == CLAUDE and current["id"].startswith(billed.id)
    assert current["in"] == billed.prepared.prompt_tokens[CLAUDE]
    assert reservation.heartbeat_at > first.heartbeat_at > reservation.created_at
    await billed.done.wait()
    reservation = await database_sync_to_async(Reservation.objects.get)(id=reservation.id)
    assert reservation.status == ReservationStatus.SETTLED
    entries = await database_sync_to_async(list)(LedgerEntry.objects.filter(turn_request_id=billed.id))
    assert [(e.input_tokens, e.output_tokens, e.estimated) for e in entries] == [(31, 60, False)]
    await wait_idle()


async def test_a_failed_settlement_is_retried_until_it_succeeds(org_a, fake_provider, settings, monkeypatch, caplog):
    settings.PARLEY_SETTLEMENT_RETRY_DELAY = 0.05
    fake_provider.anthropic.script([reply("Hello", " there", usage=(17, 5))])
    failures = []

    def flaky_settle(**kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("server closed the connection unexpectedly")
        return turn_settle(**kwargs)

    monkeypatch.setattr(engine, "turn_settle", flaky_settle)
    billed, sink = await _stream(org_a, _request("Hi"))
    await billed.done.wait()
    assert len(failures) == 2
    assert billed.outcome.cost is not None and billed.outcome.cost > 0
    entries = await database_sync_to_async(list)(LedgerEntry.objects.filter(turn_request_id=billed.id))
    assert [(e.input_tokens, e.output_tokens) for e in entries] == [(17, 5)]
    reservation = await database_sync_to_async(Reservation.objects.get)(id=billed.prepared.authorization.reservation_id)
    assert reservation.status == ReservationStatus.SETTLED
    assert "retrying" in caplog.text
    await wait_idle()


# --- a process that dies mid-stream ---------------------------------------------------------------


async def _never_finish(self, *args) -> None:
    await asyncio.Event().wait()  # the process is gone: nothing settles, nothing is saved


async def _no_call_log(attempt) -> None:
    pass


def _die(monkeypatch, gen) -> None:
    """What kill -9 leaves behind: no settlement, no call log, no more heartbeats or partial saves."""
    monkeypatch.setattr(engine.BilledStream, "_finish", _never_finish)
    monkeypatch.setattr(llm_chat, "call_log_write", _no_call_log)
    recorder = engine._recorder()
    recorder.streams.clear()
    if recorder.task is not None:
        recorder.task.cancel()
    generation._saver().discard(gen)
    gen.billed.cancel()


def _age(reservation_id, message_id, seconds: int = 90) -> None:
    past = timezone.now() - timedelta(seconds=seconds)
    Reservation.objects.filter(id=reservation_id).update(heartbeat_at=past)
    Message.objects.filter(id=message_id).update(updated_at=past)


async def test_a_dead_process_turn_is_billed_from_its_record_and_released(org_a, fake_provider, monkeypatch):
    fake_provider.anthropic.script([reply(*(f"token{i} " for i in range(200)), usage=(50, 400), delta_delay=0.05)])
    started = await turn_start(
        membership=org_a.member, conversation_id=None, content="Write a lot", model=CLAUDE, client_id=uuid.uuid4()
    )
    message_id = started.assistant_message.id
    gen = hub_module.default().generation_local(message_id)
    reservation_id = gen.prepared.authorization.reservation_id
    await _recorded(reservation_id, tokens=5)  # streaming, and recorded
    _die(monkeypatch, gen)
    await asyncio.sleep(0.05)

    # Still fresh: the sweep leaves a live-looking turn alone.
    assert await database_sync_to_async(recovery.turns_recover)() == 0
    await database_sync_to_async(_age)(reservation_id, message_id)
    assert await database_sync_to_async(recovery.turns_recover)() == 1

    reservation = await database_sync_to_async(Reservation.objects.get)(id=reservation_id)
    assert reservation.status == ReservationStatus.RECOVERED
    entries = await database_sync_to_async(list)(LedgerEntry.objects.filter(message_id=message_id))
    assert len(entries) == 1 and entries[0].estimated
    record = reservation.recorded["current"]
    assert entries[0].output_tokens == record["out"] > 0
    assert entries[0].input_tokens == record["in"] > 0
    message = await database_sync_to_async(Message.objects.get)(id=message_id)
    assert message.status == Status.INTERRUPTED
    assert message.cost == entries[0].cost.quantize(Decimal("0.00000001")) > 0
    counters = await database_sync_to_async(list)(
        PeriodSpend.objects.filter(id__in=[reservation.org_counter_id, reservation.member_counter_id])
    )
    assert all(c.reserved == 0 for c in counters), "the rest of the reservation is released"
    assert all(c.spent == entries[0].cost for c in counters)
    lost = await database_sync_to_async(list)(ProviderCall.objects.filter(call_id=record["id"]))
    assert [(c.error_class, c.usage_estimated, c.output_tokens) for c in lost] == [("ProcessLost", True, record["out"])]
    # A second sweep finds nothing more to do.
    assert await database_sync_to_async(recovery.turns_recover)() == 0

    for task in list(engine._tasks):
        task.cancel()
    engine._running.clear()
    metrics.turn_finished("chat", "interrupted", duration=0)  # the dead process's gauge went with it
    await wait_idle()


def test_a_late_settlement_after_recovery_bills_each_call_once(org_a, fake_provider):
    request = _request("Hi", max_output_tokens=100)
    prepared = engine.turn_prepare(caller=engine.Caller(membership=org_a.member), request=request)
    authorization = prepared.authorization
    call_id = f"{request.request_id}:1"
    reservations_record(
        [(authorization.reservation_id, {"calls": [], "current": {"id": call_id, "model": CLAUDE, "provider": "anthropic", "in": 40, "out": 12}})],
        now=timezone.now() - timedelta(seconds=120),
    )
    assert recovery.turns_recover() == 1
    # The process was not dead after all (a long database outage): its settlement comes late.
    cost = turn_settle(
        authorization=authorization,
        usages=[Usage(45, 13, call_id=call_id, model=CLAUDE, provider="anthropic")],
        membership=org_a.member,
    )
    entries = list(LedgerEntry.objects.filter(turn_request_id=request.request_id))
    assert len(entries) == 1 and (entries[0].input_tokens, entries[0].output_tokens) == (40, 12)
    assert cost == entries[0].cost
    spend = PeriodSpend.objects.get(id=authorization.counter_ids[0])
    assert spend.reserved == 0 and spend.spent == entries[0].cost
