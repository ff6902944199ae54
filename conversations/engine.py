"""The one billed stream behind every entry point: authorize → `llm.stream_chat` in a detached task → settle once.

The websocket and REST turn (conversations.turns, through Generation), the OpenAI-compatible
endpoint (conversations.openai) and the Celery tasks (titles, summaries: `complete_sync`) all call
the model through here, so every turn gets the same guarantees:

- `turn_prepare` applies the plan to the whole prompt (every message, system included, and the
  tools), checks the prompt against the model's context window, keeps only the fallbacks the plan
  allows and that have a price, refuses parameters the model cannot honour, and asks billing to
  reserve the worst case over every model that may serve the call. It is the one caller of
  `billing.turn_authorize` in conversations/.
- `BilledStream` runs the call as a task that belongs to the process, not to the socket or request
  that asked for it (a fresh context), hands each event to a `Sink`, and however it ends — the
  provider fails, the client stops it or goes away, the task is cancelled — closes the provider
  stream and settles what was used exactly once, in a shielded task. It is the one caller of
  `billing.turn_settle` in conversations/.
- While it streams, the process records the turn's usage so far on its reservation, with a
  heartbeat, about once a second for all its calls in one UPDATE (`_UsageRecorder`); a settlement
  that fails (the database restarting, a stale connection) is retried with backoff, and a turn
  whose process dies is settled from that record by `conversations.recovery`.
- Provider errors are translated here, once, into the project's error family (config.errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from uuid import UUID

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import Error as DatabaseFailure

from accounts.errors import OrganizationSuspended
from accounts.models import ApiKey, Membership
from billing.reservations import TurnAuthorization, turn_authorize
from billing.selectors import models_billable
from billing.settlement import reservations_record, turn_settle
from config import metrics
from config.errors import ParleyError, error_from_llm
from conversations.db import db_async
from llm import chat as llm_chat
from llm.errors import LLMError
from llm.registry import chain_for, unsupported_params
from llm.tokens import count_messages, count_text, prompt_tokens_bound
from llm.tools import ToolSet
from llm.types import ChatRequest, Finished, TextDelta, ToolCall, ToolResult, ToolSpec, Usage

logger = logging.getLogger(__name__)

# Tool rounds a conversation turn may run: the answer makes at most MAX_TOOL_ROUNDS + 1 provider
# calls, and the turn reserves budget for all of them.
MAX_TOOL_ROUNDS = 5


class ContextTooLong(ParleyError):
    """The prompt does not fit the model's context window."""

    code = "context_length_exceeded"


class UnsupportedParameter(ParleyError):
    """The model cannot honour a parameter of the request."""

    code = "unsupported_parameter"


@dataclass(frozen=True)
class Caller:
    """Who asks: the member (with organization and tier loaded) and the API key, if one was used."""

    membership: Membership
    api_key: ApiKey | None = None
    entry: str = "chat"  # which entry point asks (metrics): chat | v1 | task


@dataclass(frozen=True)
class Prepared:
    """An authorized call, ready to stream."""

    caller: Caller
    request: ChatRequest
    authorization: TurnAuthorization
    toolset: ToolSet | None = None
    max_tool_rounds: int = 0
    # where the ledger rows point (conversation turns)
    conversation_id: UUID | None = None
    message_id: UUID | None = None
    # per alias that may serve the call: the most its vendor can bill for the prompt
    prompt_tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class Outcome:
    """How a call ended."""

    status: str  # complete | failed | cancelled | interrupted (conversations.models.Status values)
    finish_reason: str  # stop | length | tool_calls | content_filter | cancelled | error
    error: ParleyError | None
    text: str
    tool_calls: list[ToolCall]  # the calls handed to the client (tools the server does not run)
    usages: list[Usage]
    model: str  # the alias that answered (a fallback's, when one answered)
    cost: Decimal | None = None  # after settlement; None when the settlement failed

    @property
    def input_tokens(self) -> int:
        return sum(u.input_tokens for u in self.usages)

    @property
    def output_tokens(self) -> int:
        return sum(u.output_tokens for u in self.usages)

    @property
    def cached_input_tokens(self) -> int:
        return sum(u.cached_input_tokens for u in self.usages)


class Sink:
    """What an entry point does with a call's events. Every method is optional."""

    async def opened(self) -> None:
        """The task runs; the provider is called next."""

    async def event(self, event: TextDelta | ToolCall | ToolResult) -> None:
        """One event of the answer, in order."""

    async def ended(self, outcome: Outcome) -> None:
        """The provider stream is closed and the usage known; the settlement comes next."""

    def settled(self, outcome: Outcome) -> None:
        """Sync, on the settlement's database thread, right after the ledger write (save what the turn stores)."""

    async def finished(self, outcome: Outcome) -> None:
        """Everything is done (also when something above failed: then `outcome.cost` may be None)."""


class QueueSink(Sink):
    """Events on a queue (TextDelta and ToolCall items), then the Outcome, last."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    async def event(self, event) -> None:
        if type(event) is not ToolResult:
            self.queue.put_nowait(event)

    async def ended(self, outcome: Outcome) -> None:
        self.queue.put_nowait(outcome)


# --- authorize ---------------------------------------------------------------------------------


def _longest_part(request: ChatRequest, tools: tuple[ToolSpec, ...]) -> int:
    """The longest single part of the prompt in characters: any message (system included), a tool
    call's arguments, or the tools' definitions together."""
    longest = 0
    for message in request.messages:
        longest = max(longest, len(message.content))
        for call in message.tool_calls:
            longest = max(longest, len(call.raw_arguments or json.dumps(call.arguments)))
    if tools:
        longest = max(longest, len(_tools_json(tools)))
    return longest


def _tools_json(tools: tuple[ToolSpec, ...]) -> str:
    return json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools])


def _prompt_tokens(request: ChatRequest, tools: tuple[ToolSpec, ...]) -> int:
    tokens = count_messages(request.messages, request.model)
    if tools:
        tokens += count_text(_tools_json(tools), request.model)
    return tokens


def _chain(request: ChatRequest):
    try:
        return chain_for(request.model)
    except LLMError as exc:
        raise error_from_llm(exc) from None


def turn_prepare(
    *,
    caller: Caller,
    request: ChatRequest,
    toolset: ToolSet | None = None,
    max_tool_rounds: int = 0,
    prompt_tokens: int | None = None,
    conversation_id: UUID | None = None,
    message_id: UUID | None = None,
) -> Prepared:
    """Check the plan and reserve the worst case (sync: it uses the database).

    `prompt_tokens`: the caller's own count of the messages (conversation turns count from stored
    per-message counts); by default the request is counted here. The tools are counted here either way.
    """
    membership = caller.membership
    if membership.organization.is_suspended:  # by staff (accounts.oversight): no turn at all
        raise OrganizationSuspended.of(membership.organization)
    tier = membership.organization.tier
    tools = tuple(request.tools) + (toolset.specs() if toolset is not None else ())
    if not tier.allows_model(request.model):
        # The plan's refusal comes first: an alias the plan lacks is not looked up.
        from billing.errors import ModelNotAllowed

        raise ModelNotAllowed(f"The {tier.name} plan does not include the model “{request.model}”.")
    chain = _chain(request)
    primary = chain[0]
    unsupported = unsupported_params(request, primary)
    if unsupported:
        names = ", ".join(f"`{name}`" for name in unsupported)
        raise UnsupportedParameter(
            f"The model “{primary.alias}” does not support {names}.", param=unsupported[0]
        )
    if prompt_tokens is None:
        tokens = _prompt_tokens(request, tools)
    else:  # the caller counted the messages; the tools are sent (and billed) too
        tokens = prompt_tokens + (count_text(_tools_json(tools), request.model) if tools else 0)
    if tokens >= primary.context_window:
        raise ContextTooLong(
            f"The prompt is about {tokens} tokens; the model “{primary.alias}” reads at most "
            f"{primary.context_window}.",
            param="messages",
        )
    # Fallbacks that could not serve this call are never tried, so they are not reserved for either.
    fitting = [
        m.alias
        for m in chain[1:]
        if m.context_window > tokens
        and not unsupported_params(request, m)
        and (m.supports_tools or not tools)
    ]
    models = models_billable(tier=tier, aliases=[primary.alias, *fitting])
    calls = max_tool_rounds + 1 if toolset is not None and len(toolset) else 1
    # What each vendor can bill: Parley's count where it is the vendor's, an upper bound otherwise.
    providers = {m.alias: m.provider for m in chain}
    tools_json = _tools_json(tools) if tools else ""
    bounds = {
        alias: prompt_tokens_bound(request.messages, tools_json=tools_json, provider=providers[alias], counted=tokens)
        for alias in models
    }
    authorization = turn_authorize(
        membership=membership,
        api_key=caller.api_key,
        model=primary.alias,
        models=models,
        prompt_tokens=tokens,
        prompt_tokens_by_model=bounds,
        # The plan limits what the client sends: its messages and its tools, not Parley's own tools.
        longest_message_chars=_longest_part(request, tuple(request.tools)),
        max_output_tokens=request.max_output_tokens,
        request_id=request.request_id,
        max_calls=calls,
    )
    request = replace(
        request,
        models=tuple(models),
        max_output_tokens=authorization.max_output_tokens,
        organization_id=membership.organization_id,
        user_id=membership.user_id,
    )
    return Prepared(
        caller=caller,
        request=request,
        authorization=authorization,
        toolset=toolset,
        max_tool_rounds=max_tool_rounds if toolset is not None else 0,
        conversation_id=conversation_id,
        message_id=message_id,
        prompt_tokens=bounds,
    )


turn_prepare_async = db_async(turn_prepare)


# --- the stream --------------------------------------------------------------------------------

# The one registry of running calls, by request id. Strong references: a task only the event loop
# references can be garbage-collected.
_running: dict[str, BilledStream] = {}
_tasks: set[asyncio.Task] = set()


def _keep(task: asyncio.Task) -> asyncio.Task:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def running(request_id: str) -> BilledStream | None:
    return _running.get(request_id)


def stop(request_id: str) -> bool:
    """Stop a call running in this process (what was generated is billed). False if none runs here."""
    billed = _running.get(request_id)
    if billed is None:
        return False
    billed.cancel()
    return True


class BilledStream:
    """One authorized call: streaming in a task of its own, ended and settled exactly once."""

    def __init__(self, prepared: Prepared, sink: Sink) -> None:
        self.prepared = prepared
        self.sink = sink
        self.id = prepared.request.request_id
        self.task: asyncio.Task | None = None
        self.done = asyncio.Event()
        self.outcome: Outcome | None = None
        self._stop_requested = False
        self._stream = None
        # the usage record: output tokens counted so far of the call streaming now (see usage_record)
        self._counted_call: str | None = None
        self._counted_parts = 0
        self._counted_tokens = 0
        self._started = 0.0
        self._first_text: float | None = None

    @property
    def model(self) -> str:
        """The alias answering: a fallback's once it streams (fallbacks happen only before the first text)."""
        answering = self._stream.model if self._stream is not None else None
        return answering.alias if answering is not None else self.prepared.request.model

    def usage_record(self) -> dict:
        """What this call has used so far, for its reservation (billing.settlement.recorded_usages).

        The calls that ended, at their usage; the call streaming now, at its prompt and the output
        tokens of the text it has delivered (counted incrementally: only the text since the last record).
        """
        prepared = self.prepared
        stream = self._stream
        calls = []
        if stream is not None:
            calls = [
                {
                    "id": u.call_id,
                    "model": u.model,
                    "provider": u.provider,
                    "in": u.input_tokens,
                    "out": u.output_tokens,
                    "cached": u.cached_input_tokens,
                    "estimated": u.estimated,
                }
                for u in stream.usages
            ]
        record: dict = {"calls": calls}
        if prepared.conversation_id is not None:
            record["conversation_id"] = str(prepared.conversation_id)
        if prepared.message_id is not None:
            record["message_id"] = str(prepared.message_id)
        flight = stream.in_flight if stream is not None else None
        if flight is not None:
            if flight.call_id != self._counted_call:
                self._counted_call, self._counted_parts, self._counted_tokens = flight.call_id, 0, 0
            parts = len(flight.text)
            if parts > self._counted_parts:
                self._counted_tokens += count_text("".join(flight.text[self._counted_parts : parts]), flight.model)
                self._counted_parts = parts
            prompt = prepared.prompt_tokens.get(flight.model) or max(prepared.prompt_tokens.values(), default=0)
            record["current"] = {
                "id": flight.call_id,
                "model": flight.model,
                "provider": flight.provider,
                # a later call of a tool loop reads the earlier answers too
                "in": prompt + sum(call["out"] for call in calls),
                "out": self._counted_tokens,
            }
        return record

    def start(self) -> None:
        _running[self.id] = self
        _recorder().add(self)
        # A fresh context: the task outlives the request or socket that started it and must not
        # inherit its per-request state (asgiref's thread-sensitive context ends with the request).
        self.task = _keep(asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context()))

    def cancel(self) -> None:
        """Stop: what was generated is kept and billed; the outcome is `cancelled`."""
        self._stop_requested = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _run(self) -> None:
        prepared, sink = self.prepared, self.sink
        status, finish_reason, error = "complete", "stop", None
        text: list[str] = []
        handed: list[ToolCall] = []
        toolset = prepared.toolset
        stream = None
        self._started = time.monotonic()
        metrics.turn_started(prepared.caller.entry)
        try:
            await sink.opened()
            stream = self._stream = llm_chat.stream_chat(
                prepared.request, toolset=toolset, max_tool_rounds=prepared.max_tool_rounds
            )
            async for event in stream:
                kind = type(event)
                if kind is TextDelta:
                    if event.text:
                        if not text:  # the first text: recorded at once, not at the next tick
                            _recorder().wake()
                            self._first_text = time.monotonic()
                        text.append(event.text)
                        await sink.event(event)
                elif kind is ToolCall:
                    if toolset is None or event.name not in toolset:
                        handed.append(event)
                    await sink.event(event)
                elif kind is ToolResult:
                    await sink.event(event)
                elif kind is Finished:
                    finish_reason = event.reason
        except asyncio.CancelledError:
            finish_reason = "cancelled"
            if self._stop_requested:
                status = "cancelled"
            else:
                status = "interrupted"
                error = ParleyError("The answer was interrupted (the server stopped).", code="interrupted")
        except LLMError as exc:
            status, finish_reason, error = "failed", "error", error_from_llm(exc)
            metrics.provider_error(exc.provider, error.code)
        except ParleyError as exc:
            status, finish_reason, error = "failed", "error", exc
        except Exception as exc:
            logger.exception("call %s failed", self.id)
            status, finish_reason = "failed", "error"
            error = ParleyError(f"Internal error ({type(exc).__name__}).", code="internal_error")
        finally:
            finish = _keep(asyncio.ensure_future(self._finish(stream, status, finish_reason, error, text, handed)))
            with contextlib.suppress(asyncio.CancelledError):
                # Cancelled again while settling: the shielded task finishes on its own.
                await asyncio.shield(finish)

    async def _finish(self, stream, status, finish_reason, error, text, handed) -> None:
        outcome = None
        try:
            usages: list[Usage] = []
            model = self.prepared.request.model
            if stream is not None:
                try:
                    await stream.aclose()  # the provider stops generating (and billing)
                except Exception:
                    logger.warning("closing the provider stream of %s failed", self.id, exc_info=True)
                usages = list(stream.usages)
                if stream.model is not None:
                    model = stream.model.alias
            outcome = self.outcome = Outcome(
                status=status,
                finish_reason=finish_reason,
                error=error,
                text="".join(text),
                tool_calls=handed,
                usages=usages,
                model=model,
            )
            with _logged("ending"):
                await self.sink.ended(outcome)
            await self._settle_retrying(outcome)
        except Exception:
            logger.exception("finishing call %s failed", self.id)
        finally:
            _running.pop(self.id, None)
            _recorder().discard(self)
            metrics.turn_finished(
                self.prepared.caller.entry,
                status,
                ttft=None if self._first_text is None else self._first_text - self._started,
                duration=time.monotonic() - self._started,
            )
            if outcome is not None:
                with _logged("finishing"):
                    await self.sink.finished(outcome)
            self.done.set()

    async def _settle_retrying(self, outcome: Outcome) -> None:
        """Settle and save, retried with backoff until both succeed (both are idempotent).

        Meanwhile the usage record (now the final usage) keeps its heartbeat; after
        SETTLEMENT_RETRY_SECONDS this process gives up and stops the heartbeat, and the recovery sweep
        settles the turn from the record instead.
        """
        give_up_at = time.monotonic() + _setting("PARLEY_SETTLEMENT_RETRY_SECONDS", 600.0)
        delay = _setting("PARLEY_SETTLEMENT_RETRY_DELAY", 0.25)
        while True:
            try:
                await db_async(self._settle)(outcome)
                return
            except DatabaseFailure as exc:  # anything else is a bug: retrying cannot help (logged by _finish)
                if time.monotonic() + delay > give_up_at:
                    logger.error("settling %s failed for good (%s); the recovery sweep bills it", self.id, type(exc).__name__)
                    raise
                logger.warning("settling %s failed (%s); retrying in %.2f s", self.id, type(exc).__name__, delay)
                metrics.settlement_retry()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _setting("PARLEY_SETTLEMENT_RETRY_MAX_DELAY", 5.0))

    def _settle(self, outcome: Outcome) -> None:
        prepared = self.prepared
        outcome.cost = turn_settle(
            authorization=prepared.authorization,
            usages=outcome.usages,
            membership=prepared.caller.membership,
            api_key=prepared.caller.api_key,
            conversation_id=prepared.conversation_id,
            message_id=prepared.message_id,
        )
        self.sink.settled(outcome)


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


# --- the usage record ----------------------------------------------------------------------------


class _UsageRecorder:
    """Writes the usage record and heartbeat of every call running on one event loop: one UPDATE a tick.

    The tick is PARLEY_USAGE_RECORD_SECONDS (1 s; 0 turns recording off, for benchmarks only: a
    turn's process then looks dead to the recovery sweep after BILLING_HEARTBEAT_STALE_SECONDS).
    A call's first text is recorded at once. A write that fails (the database is away) is tried
    again at the next tick; it never touches the stream.
    """

    def __init__(self) -> None:
        self.streams: set[BilledStream] = set()
        self.task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._failing_since: float | None = None

    def add(self, billed: BilledStream) -> None:
        if _setting("PARLEY_USAGE_RECORD_SECONDS", 1.0) <= 0:
            return
        self.streams.add(billed)
        if self.task is None or self.task.done():
            self.task = _keep(asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context()))

    def discard(self, billed: BilledStream) -> None:
        self.streams.discard(billed)
        if not self.streams and self.task is not None and not self.task.done():
            self.task.cancel()  # nothing to record: no task left behind (Celery closes its loops)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        interval = _setting("PARLEY_USAGE_RECORD_SECONDS", 1.0)
        while self.streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            records = [(b.prepared.authorization.reservation_id, b.usage_record()) for b in self.streams]
            try:
                await _record(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                if self._failing_since is None or now - self._failing_since > 30:
                    self._failing_since = now
                    logger.warning("could not record the usage of %d calls (%s)", len(records), type(exc).__name__)
            else:
                self._failing_since = None


_record = db_async(reservations_record)
_recorders: dict[asyncio.AbstractEventLoop, _UsageRecorder] = {}


def _recorder() -> _UsageRecorder:
    loop = asyncio.get_running_loop()
    recorder = _recorders.get(loop)
    if recorder is None:
        for old in [other for other in _recorders if other.is_closed()]:
            del _recorders[old]
        recorder = _recorders[loop] = _UsageRecorder()
    return recorder


@contextlib.contextmanager
def _logged(what: str):
    try:
        yield
    except Exception:
        logger.exception("%s a call failed", what)


# --- the synchronous form (Celery) ---------------------------------------------------------------


def complete_sync(*, caller: Caller, request: ChatRequest, max_tool_rounds: int = 0) -> Outcome:
    """Prepare, run and settle one call from synchronous code; returns when it is settled."""
    prepared = turn_prepare(caller=replace(caller, entry="task"), request=request)

    async def run() -> Outcome:
        billed = BilledStream(prepared, Sink())
        billed.start()
        await billed.done.wait()
        return billed.outcome

    outcome = async_to_sync(run)()
    if outcome is None:
        raise ParleyError("The call could not be finished.", code="internal_error")
    return outcome


__all__ = [
    "MAX_TOOL_ROUNDS",
    "BilledStream",
    "Caller",
    "ContextTooLong",
    "Outcome",
    "Prepared",
    "QueueSink",
    "Sink",
    "UnsupportedParameter",
    "complete_sync",
    "running",
    "stop",
    "turn_prepare",
    "turn_prepare_async",
]
