"""The conversation side of one answer: the engine's Sink for websocket and REST turns.

The call itself (authorize, stream, settle once) is conversations.engine's `BilledStream`; this
module turns its events into frames: it coalesces deltas (at most one frame per FLUSH_INTERVAL, or
sooner when FLUSH_CHARS have gathered), publishes them through the hub, saves the partial text at
least once a second, and when the call ends saves the message in its terminal state (on the
settlement's thread, right after the ledger write) and publishes generation.finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from conversations import engine, frames
from conversations import hub as hub_module
from conversations.db import db_async
from conversations.followups import followups_dispatch
from conversations.models import Message
from llm.tokens import count_text
from llm.types import TextDelta, ToolCall, ToolResult

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.03  # seconds: at most ~33 delta frames per second per answer
FLUSH_CHARS = 512  # flush sooner when this much text has gathered


def flush_interval() -> float:
    """FLUSH_INTERVAL, or settings/env PARLEY_STREAM_FLUSH_INTERVAL (0 turns coalescing off: benchmarks)."""
    value = getattr(settings, "PARLEY_STREAM_FLUSH_INTERVAL", None)
    if value is None:
        value = os.environ.get("PARLEY_STREAM_FLUSH_INTERVAL", "").strip() or FLUSH_INTERVAL
    return float(value)

SAVE_INTERVAL = 1.0  # seconds between saves of the partial text (also the liveness heartbeat)
HEARTBEAT_INTERVAL = 10.0  # touch `updated_at` this often even when no text arrives

COST_QUANTUM = Decimal("0.00000001")  # the decimal places of Message.cost

# Strong references: a task that only the event loop references can be garbage-collected.
_tasks: set[asyncio.Task] = set()


def _keep(task: asyncio.Task) -> asyncio.Task:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


@dataclass(eq=False)  # identity semantics: kept in sets and registries
class Generation(engine.Sink):
    """The conversation side of one answer: frames to the hub, partial saves, the saved message."""

    conversation_id: UUID
    message_id: UUID
    prepared: engine.Prepared
    # frames announcing the turn (conversation.created, message.created, generation.started)
    opening_frames: list[dict] = field(default_factory=list)
    hub: hub_module.Hub = field(default_factory=hub_module.default)
    message: Message | None = None  # the assistant row saved at the start of the turn
    followups: tuple[str, ...] = ()  # Celery tasks the conversation needs afterwards ("title", "summary")

    def __post_init__(self) -> None:
        self.model = self.prepared.request.model
        self.chunks: list[str] = []
        self.seq = 0
        self.announced = False
        self.remote = False  # another process follows: publish deltas to the channel layer too
        self.billed: engine.BilledStream | None = None
        self.task: asyncio.Task | None = None
        self.done = asyncio.Event()
        self.result: Message | None = None
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._tool_events: list[dict] = []
        self._saved_seq = 0
        self._last_write = time.monotonic()
        self._mid = str(self.message_id)
        self._loop = asyncio.get_running_loop()
        self._flush_interval = flush_interval()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self.hub.generation_register(self)
        self.billed = engine.BilledStream(self.prepared, self)
        self.billed.start()
        self.task = self.billed.task
        return self.task

    def cancel(self) -> None:
        """Stop: what was generated is kept and billed; the message ends `cancelled`."""
        if self.billed is not None:
            self.billed.cancel()

    def snapshot(self) -> dict:
        return frames.message_snapshot(message_id=self._mid, seq=self.seq, content="".join(self.chunks))

    # --- the engine's sink -------------------------------------------------------------------

    async def opened(self) -> None:
        await self.hub.generation_join(self)
        for frame in self.opening_frames:
            if frame["type"] == "generation.started":
                self.announced = True
            await self.hub.publish(self.conversation_id, frame)
        self.announced = True
        _saver().add(self)

    async def event(self, event) -> None:
        kind = type(event)
        if kind is TextDelta:
            await self._add(event.text)
        elif kind is ToolCall:
            await self._tool_call(event)
        elif kind is ToolResult:
            await self._tool_result(event)

    async def ended(self, outcome: engine.Outcome) -> None:
        _saver().discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(Exception):
            await self._flush()

    def settled(self, outcome: engine.Outcome) -> None:
        self.result = message_save_final(generation=self, outcome=outcome, content="".join(self.chunks))

    async def finished(self, outcome: engine.Outcome) -> None:
        try:
            if self.result is not None:
                await self.hub.publish(self.conversation_id, frames.generation_finished(self.result))
        except Exception:
            logger.exception("publishing the end of %s failed", self.message_id)
        finally:
            with contextlib.suppress(Exception):
                await self.hub.generation_unregister(self)
            self.done.set()
        if self.followups:
            with contextlib.suppress(Exception):
                await db_async(followups_dispatch)(conversation_id=self.conversation_id, needs=self.followups)

    # --- deltas ------------------------------------------------------------------------------

    async def _add(self, text: str) -> None:
        self._pending.append(text)
        self._pending_chars += len(text)
        now = self._loop.time()
        if now - self._last_flush >= self._flush_interval or self._pending_chars >= FLUSH_CHARS:
            await self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._last_flush + self._flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending:
            self._timer_task = _keep(asyncio.ensure_future(self._flush()))

    async def _flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_chars = 0
            self._last_flush = self._loop.time()
            self.seq += 1
            self.chunks.append(text)
            await self.hub.publish(
                self.conversation_id,
                frames.delta(message_id=self._mid, seq=self.seq, text=text),
                remote=self.remote,
            )

    async def _tool_call(self, event: ToolCall) -> None:
        await self._flush()
        call = {"id": event.id, "name": event.name, "arguments": event.arguments}
        self._tool_events.append({"call": call})
        await self.hub.publish(
            self.conversation_id,
            frames.tool_call(message_id=self._mid, call_id=event.id, name=event.name, arguments=event.arguments),
        )

    async def _tool_result(self, event: ToolResult) -> None:
        await self._flush()
        for entry in reversed(self._tool_events):
            if entry["call"]["id"] == event.call_id:
                entry["result"] = event.result
                entry["is_error"] = event.is_error
                break
        await self.hub.publish(
            self.conversation_id,
            frames.tool_result(message_id=self._mid, call_id=event.call_id, result=event.result),
        )


class PartialSaver:
    """Saves the partial text of every answer streaming in this process, once a second, in one batch.

    One database call per second for all answers (not one per answer), appending only the text
    that arrived since the last save (guarded by last_seq, so a retry never appends twice). The
    same write is the liveness heartbeat that `messages_mark_interrupted` relies on.
    """

    def __init__(self) -> None:
        self.generations: set[Generation] = set()
        self.task: asyncio.Task | None = None

    def add(self, generation: Generation) -> None:
        self.generations.add(generation)
        if self.task is None or self.task.done():
            self.task = _keep(asyncio.ensure_future(self._run()))

    def discard(self, generation: Generation) -> None:
        self.generations.discard(generation)

    async def _run(self) -> None:
        while self.generations:
            await asyncio.sleep(SAVE_INTERVAL)
            now = time.monotonic()
            due = []
            for generation in list(self.generations):
                seq = generation.seq
                if seq != generation._saved_seq or now - generation._last_write >= HEARTBEAT_INTERVAL:
                    tail = "".join(generation.chunks[generation._saved_seq : seq])
                    due.append((generation, seq, tail))
            if not due:
                continue
            rows = [(tail, seq, generation.message_id, generation._saved_seq) for generation, seq, tail in due]
            try:
                await _save_partials(rows)
            except Exception:
                logger.exception("could not save the partial text of %d answers", len(rows))
                continue
            for generation, seq, _tail in due:
                generation._saved_seq, generation._last_write = seq, now


def _save_partials_sync(rows: list[tuple[str, int, UUID, int]]) -> None:
    meta = Message._meta
    now = meta.get_field("updated_at").get_db_prep_value(timezone.now(), connection)
    pk = meta.pk
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {meta.db_table} SET content = content || %s, last_seq = %s, updated_at = %s "
            "WHERE id = %s AND status = 'streaming' AND last_seq = %s",
            [
                (tail, seq, now, pk.get_db_prep_value(message_id, connection), saved_seq)
                for tail, seq, message_id, saved_seq in rows
            ],
        )


_save_partials = db_async(_save_partials_sync)
_savers: dict[asyncio.AbstractEventLoop, PartialSaver] = {}


def _saver() -> PartialSaver:
    loop = asyncio.get_running_loop()
    saver = _savers.get(loop)
    if saver is None:
        for old in [other for other in _savers if other.is_closed()]:
            del _savers[old]
        saver = _savers[loop] = PartialSaver()
    return saver


def message_save_final(*, generation: Generation, outcome: engine.Outcome, content: str) -> Message:
    """End the assistant message as the call ended (on the settlement's thread, after the ledger write)."""
    now = timezone.now()
    error = outcome.error
    fields = {
        "content": content,
        "last_seq": generation.seq,
        "status": outcome.status,
        "error_code": error.code if error is not None else "",
        "error_message": error.message if error is not None else "",
        "model": outcome.model,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "token_count": count_text(content, generation.model) if content else 0,
        "tool_events": generation._tool_events,
        "updated_at": now,
        "finished_at": now,
    }
    if outcome.cost is not None:
        fields["cost"] = Decimal(outcome.cost).quantize(COST_QUANTUM)
    # One UPDATE of the changed columns; the row read at the start of the turn is brought up to date.
    Message.objects.filter(id=generation.message_id).update(**fields)
    message = generation.message or Message.objects.get(id=generation.message_id)
    for name, value in fields.items():
        setattr(message, name, value)
    return message


async def generation_wait(message_id: UUID, *, hub: hub_module.Hub | None = None) -> Message:
    """Wait until an answer is finished; returns the saved message (in any terminal state).

    Bound the wait with `asyncio.timeout()` around the call.
    """
    hub = hub or hub_module.default()
    generation = hub.generation_local(message_id)
    if generation is not None:
        await generation.done.wait()
        if generation.result is not None:
            return generation.result
    # Running in another process (or finished already): the database is the record.
    while True:
        message = await db_async(Message.objects.get)(id=message_id)
        if message.is_terminal:
            return message
        await asyncio.sleep(0.2)
