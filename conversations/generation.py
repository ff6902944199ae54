"""One assistant answer being generated: an asyncio task owned by the process, not by a socket.

The task streams from `llm`, coalesces deltas (at most one frame per FLUSH_INTERVAL, or sooner when
FLUSH_CHARS have gathered), publishes them through the hub, saves the partial text at least once a
second, and always ends the message in a terminal state with its usage settled in billing —
whatever happens: the provider fails, the client stops it, the socket goes away, or the task is
cancelled (the settlement runs in a shielded task kept in the module registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing.services import turn_settle
from conversations import hub as hub_module
from conversations.db import db_async
from conversations.models import Message, Status
from llm import chat as llm_chat
from llm.errors import LLMError
from llm.tokens import count_text
from llm.types import ChatRequest, TextDelta, ToolCall, ToolResult, Usage

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

# Tool rounds a turn may run: the answer makes at most MAX_TOOL_ROUNDS + 1 provider calls, and the
# turn reserves budget for all of them (conversations.services).
MAX_TOOL_ROUNDS = 5

# Strong references: a task that only the event loop references can be garbage-collected.
_tasks: set[asyncio.Task] = set()


def _keep(task: asyncio.Task) -> asyncio.Task:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


@dataclass(eq=False)  # identity semantics: kept in sets and registries
class Generation:
    conversation_id: UUID
    message_id: UUID
    model: str
    request: ChatRequest
    membership: Any
    api_key: Any
    authorization: Any
    toolset: Any = None
    # frames announcing the turn (conversation.created, message.created, generation.started)
    opening_frames: list[dict] = field(default_factory=list)
    hub: hub_module.Hub = field(default_factory=hub_module.default)
    message: Message | None = None  # the assistant row saved at the start of the turn
    followups: tuple[str, ...] = ()  # Celery tasks the conversation needs afterwards ("title", "summary")

    def __post_init__(self) -> None:
        self.chunks: list[str] = []
        self.seq = 0
        self.announced = False
        self.remote = False  # another process follows: publish deltas to the channel layer too
        self.stream = None
        self.task: asyncio.Task | None = None
        self.done = asyncio.Event()
        self.result: Message | None = None
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._stop_requested = False
        self._tool_events: list[dict] = []
        self._saved_seq = 0
        self._last_write = time.monotonic()
        self._mid = str(self.message_id)
        self._loop = asyncio.get_running_loop()
        self._flush_interval = flush_interval()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self.hub.generation_register(self)
        # A fresh context: the task outlives the request or socket that started it, and must not
        # inherit its per-request state (asgiref's thread-sensitive context ends with the request).
        self.task = _keep(self._loop.create_task(self._run(), context=contextvars.Context()))
        return self.task

    def cancel(self) -> None:
        """Stop: what was generated is kept and billed; the message ends `cancelled`."""
        self._stop_requested = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def snapshot(self) -> dict:
        return hub_module.snapshot_frame(message_id=self._mid, seq=self.seq, content="".join(self.chunks))

    async def _run(self) -> None:
        status, error_code, error_message = Status.COMPLETE, "", ""
        saver = _saver()
        try:
            await self.hub.generation_join(self)
            for frame in self.opening_frames:
                if frame["type"] == "generation.started":
                    self.announced = True
                await self.hub.publish(self.conversation_id, frame)
            self.announced = True
            saver.add(self)
            self.stream = llm_chat.stream_chat(self.request, toolset=self.toolset, max_tool_rounds=MAX_TOOL_ROUNDS)
            async for event in self.stream:
                kind = type(event)
                if kind is TextDelta:
                    if event.text:
                        await self._add(event.text)
                elif kind is ToolCall:
                    await self._tool_call(event)
                elif kind is ToolResult:
                    await self._tool_result(event)
        except asyncio.CancelledError:
            if self._stop_requested:
                status = Status.CANCELLED
            else:
                status, error_code, error_message = Status.INTERRUPTED, "interrupted", "The server stopped."
        except LLMError as exc:
            status, error_code, error_message = Status.FAILED, "provider_error", exc.message
        except Exception as exc:
            logger.exception("generation %s failed", self.message_id)
            status, error_code, error_message = Status.FAILED, "internal_error", f"Internal error ({type(exc).__name__})."
        finally:
            saver.discard(self)
            finish = _keep(asyncio.ensure_future(self._finish(status, error_code, error_message)))
            try:
                await asyncio.shield(finish)
            except asyncio.CancelledError:
                # Cancelled again while settling: the shielded task finishes on its own.
                pass

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
                {"type": "delta", "message": self._mid, "seq": self.seq, "text": text},
                remote=self.remote,
            )

    async def _tool_call(self, event: ToolCall) -> None:
        await self._flush()
        call = {"id": event.id, "name": event.name, "arguments": event.arguments}
        self._tool_events.append({"call": call})
        await self.hub.publish(self.conversation_id, {"type": "tool.call", "message": self._mid, "call": call})

    async def _tool_result(self, event: ToolResult) -> None:
        await self._flush()
        for entry in reversed(self._tool_events):
            if entry["call"]["id"] == event.call_id:
                entry["result"] = event.result
                entry["is_error"] = event.is_error
                break
        await self.hub.publish(
            self.conversation_id,
            {"type": "tool.result", "message": self._mid, "call_id": event.call_id, "result": event.result},
        )

    # --- saving ------------------------------------------------------------------------------

    async def _finish(self, status: str, error_code: str, error_message: str) -> None:
        try:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            with contextlib.suppress(Exception):
                await self._flush()
            usages: list[Usage] = []
            if self.stream is not None:
                try:
                    await self.stream.aclose()  # the provider stops generating (and billing)
                except Exception:
                    logger.warning("closing the provider stream of %s failed", self.message_id, exc_info=True)
                usages = list(getattr(self.stream, "usages", []) or [])
            message = await db_async(settle_and_save)(
                generation=self,
                usages=usages,
                status=status,
                error_code=error_code,
                error_message=error_message,
                content="".join(self.chunks),
            )
            self.result = message
            await self.hub.publish(self.conversation_id, hub_module.finished_frame(message))
        except Exception:
            logger.exception("finishing generation %s failed", self.message_id)
        finally:
            with contextlib.suppress(Exception):
                await self.hub.generation_unregister(self)
            self.done.set()
        if self.followups:
            with contextlib.suppress(Exception):
                await db_async(_dispatch_followups)(self.conversation_id, self.followups)


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


def settle_and_save(
    *, generation: Generation, usages: list[Usage], status: str, error_code: str, error_message: str, content: str
) -> Message:
    cost = None
    try:
        cost = turn_settle(
            authorization=generation.authorization,
            usages=usages,
            membership=generation.membership,
            api_key=generation.api_key,
            conversation_id=generation.conversation_id,
            message_id=generation.message_id,
        )
    except Exception:
        # The answer still ends; the reservation expires and the call log keeps the usage.
        logger.exception("settling %s failed", generation.message_id)
    now = timezone.now()
    fields = {
        "content": content,
        "last_seq": generation.seq,
        "status": status,
        "error_code": error_code,
        "error_message": error_message,
        "input_tokens": sum(u.input_tokens for u in usages),
        "output_tokens": sum(u.output_tokens for u in usages),
        "token_count": count_text(content, generation.model) if content else 0,
        "tool_events": generation._tool_events,
        "updated_at": now,
        "finished_at": now,
    }
    if cost is not None:
        fields["cost"] = Decimal(cost).quantize(COST_QUANTUM)
    # One UPDATE of the changed columns; the row read at the start of the turn is brought up to date.
    Message.objects.filter(id=generation.message_id).update(**fields)
    message = getattr(generation, "message", None) or Message.objects.get(id=generation.message_id)
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _dispatch_followups(conversation_id: UUID, needs: tuple[str, ...]) -> None:
    from conversations.services import conversation_followups_dispatch

    conversation_followups_dispatch(conversation_id=conversation_id, needs=needs)


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
