"""`stream_chat`: one call for the rest of Parley — retries, fallbacks, the tool loop and the call log.

    stream = stream_chat(request, toolset=toolset_for_tier("pro"))
    async for event in stream:          # TextDelta, ToolCall, ToolResult, Usage, Finished
        ...
    stream.usages                       # one Usage per provider call that may cost money

Retry policy (the SDKs' own retries are off): exponential backoff with full jitter, at least the
provider's Retry-After, for rate limits, overload, 5xx, timeouts and broken connections — and only
while this provider call has not yielded a TextDelta. A Retry-After longer than the longest backoff
skips straight to the fallback. When a model's attempts run out, the next alias of its fallback list
is tried; errors that another provider may not have (quota, auth, unconfigured) fall back at once;
invalid requests and context overflow end the stream (every model would refuse them).

The chain: `request.models` when it is set (exactly those aliases, in order — nothing else is ever
called), else the model and its registry fallbacks. A primary that cannot honour one of the request's
parameters (llm.registry.unsupported_params) ends the stream with InvalidRequest before any call;
fallbacks that cannot honour them, or lack tools when the request sends tools, are skipped.
`stream.model` is the model that answered (a fallback's, after a fallback).

Timeouts: connect (httpx), first event, and between two events — PARLEY_LLM_* settings (llm/conf.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from channels.db import database_sync_to_async
from django.utils import timezone

from llm import conf, registry
from llm import errors as e
from llm.calllog import Attempt, call_log_write, prompt_sha256
from llm.providers import provider_get
from llm.tokens import count_messages, count_text, prompt_tokens_bound
from llm.tools import ToolSet
from llm.types import (
    ChatRequest,
    Finished,
    Message,
    ModelInfo,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
)

logger = logging.getLogger(__name__)

_NEVER = float("inf")
current_task = asyncio.current_task

# errors after which another provider may well succeed, though retrying this one cannot
_FALL_BACK_AT_ONCE = (e.QuotaExceeded, e.AuthFailed, e.ModelUnavailable)


def backoff_delay(attempt: int, retry_after: float | None = None) -> float | None:
    """Seconds to wait before retry number `attempt` (1 = first retry); None: do not wait, fall back."""
    ceiling = min(conf.retry_max_delay(), conf.retry_base_delay() * (2 ** (attempt - 1)))
    delay = random.uniform(0, ceiling)  # full jitter
    if retry_after is not None:
        if retry_after > conf.retry_max_delay():
            return None
        delay = max(delay, retry_after)
    return delay


_rows_load = database_sync_to_async(registry.rows_load)


async def _resolve_chain(request: ChatRequest) -> list[ModelInfo]:
    """The model and its allowed, available fallbacks, in order (the registry rows, kept briefly in memory)."""
    rows = registry.rows_cached()
    if rows is None:
        rows = await _rows_load()
    return registry.chain_from_rows(request.model, rows, request.models)


def _serving(request: ChatRequest, chain: list[ModelInfo]) -> list[ModelInfo]:
    """The chain that may serve the request: InvalidRequest when the primary cannot honour it."""
    refused = registry.unsupported_error(request, chain[0])
    if refused is not None:
        raise refused
    return registry.serving_filter(request, chain)


@dataclass(frozen=True)
class InFlight:
    """The provider call streaming now, for the engine's usage record: its id, model and text so far."""

    call_id: str
    model: str
    provider: str
    text: list[str]  # the attempt's own list: it grows as deltas arrive


@dataclass
class _Attempt:
    """One provider attempt in flight."""

    record: Attempt
    model: ModelInfo
    request: ChatRequest
    events: AsyncIterator[StreamEvent]
    started: float
    reported: Usage | None = None
    finish: str = "stop"


class ChatStream:
    """An async iterator of StreamEvent; `usages` lists the provider calls that may cost money."""

    def __init__(self, request: ChatRequest, *, toolset: ToolSet | None = None, max_tool_rounds: int = 5) -> None:
        self.request = request
        self.toolset = toolset
        self.max_tool_rounds = max(0, max_tool_rounds)
        self.usages: list[Usage] = []
        # the model that answered the last call (a fallback's after a fallback), from its first delta on
        self.model: ModelInfo | None = None
        # the attempt streaming now (None between attempts); once it ends, its Usage is in `usages`
        self.in_flight: InFlight | None = None
        self._calls = 0
        self._gen = self._run()
        self._closed = False
        # the watchdog of the first-token and idle timeouts (see _arm)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER  # when the timer fires
        self._period = 1.0  # the timeout in force (first token, then idle)
        self._deadline = 0.0
        self._waiting = False
        self._expired = False
        self._task: asyncio.Task | None = None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._gen  # `async for` drives the generator itself: no extra layer per event

    async def __anext__(self) -> StreamEvent:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop: the upstream connection is closed, what was used is in `usages`. Safe to repeat."""
        if self._closed:
            return
        self._closed = True
        await self._gen.aclose()

    # --- timeouts ----------------------------------------------------------------------------
    # One lazily re-armed timer instead of a timeout context per event: moving the deadline is a
    # float assignment, and the timer only cancels the task while it awaits the provider.

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the timer fires by the current deadline (called when the deadline moves earlier)."""
        deadline = self._deadline
        if self._timer_at > deadline:  # the timer would fire too late (or there is none): re-arm
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer, loop)
            self._timer_at = deadline

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, _NEVER
        if not self._waiting:
            # suspended at a yield (the caller is busy): no timeout runs; look again one period later
            self._timer_at = loop.time() + self._period
            self._timer = loop.call_at(self._timer_at, self._on_timer, loop)
            return
        if loop.time() >= self._deadline:
            if self._task is not None:
                self._expired = True
                self._task.cancel()
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer, loop)
            self._timer_at = self._deadline

    def _disarm(self) -> None:
        self._waiting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, _NEVER

    def _timed_out(self) -> bool:
        """After a CancelledError: was it our timeout (and no one else's cancel)?"""
        if not self._expired:
            return False
        self._expired = False
        task = self._task
        return task is None or task.uncancel() == 0

    # --- the turn ------------------------------------------------------------------------------

    async def _run(self) -> AsyncIterator[StreamEvent]:
        try:
            request = self.request
            chain = _serving(request, await _resolve_chain(request))
            tools = list(request.tools)
            if self.toolset is not None:
                names = {t.name for t in tools}
                tools += [spec for spec in self.toolset.specs() if spec.name not in names]
            messages = list(request.messages)
            loop = asyncio.get_running_loop()
            loop_time = loop.time
            first_timeout, idle = conf.first_token_timeout(), conf.idle_timeout()
            attempts = conf.max_attempts()
            for round_no in range(1, self.max_tool_rounds + 2):
                last_round = round_no > self.max_tool_rounds
                call_request = replace(
                    request,
                    messages=tuple(messages),
                    tools=tuple(tools),
                    tool_choice=("none" if last_round and tools and self.toolset is not None else request.tool_choice),
                )
                text: list[str] = []
                tool_calls: list[ToolCall] = []  # held until the call ends, so a retry cannot repeat them
                answered: _Attempt | None = None
                last_error: e.LLMError | None = None
                # one provider call: attempts, retries and fallbacks until one succeeds or all fail
                for model in chain:
                    if not model.supports_tools and any(m.tool_calls or m.role == "tool" for m in call_request.messages):
                        continue  # the conversation so far holds tool calls this model cannot read
                    limit = model.max_output_tokens
                    model_request = replace(
                        call_request,
                        max_output_tokens=min(call_request.max_output_tokens or limit, limit),
                        tools=call_request.tools if model.supports_tools else (),
                    )
                    sha = prompt_sha256(model_request, model.vendor_model)
                    for attempt_no in range(1, attempts + 1):
                        attempt = self._start(model_request, model, attempt_no, round_no, sha)
                        text.clear()
                        tool_calls.clear()
                        self.in_flight = InFlight(attempt.record.call_id, model.alias, model.provider, text)
                        next_event = attempt.events.__anext__
                        wait = self._period = first_timeout
                        self._task = current_task()  # whoever iterates is who a timeout interrupts
                        self._deadline = loop_time() + wait
                        self._arm(loop)
                        try:
                            while True:
                                # per event only a float and a flag: the timer re-arms itself lazily
                                self._deadline = loop_time() + wait
                                self._waiting = True
                                try:
                                    event = await next_event()
                                except StopAsyncIteration:
                                    break
                                except asyncio.CancelledError:
                                    if self._timed_out():
                                        which = "first token" if not text and wait == first_timeout else "next chunk"
                                        raise e.Timeout(f"{model.provider}: no {which} within {wait:g} s",
                                                        provider=model.provider) from None
                                    raise
                                finally:
                                    self._waiting = False
                                if wait is not idle:  # after the first event the idle timeout applies
                                    wait = self._period = idle
                                    if idle < first_timeout:
                                        self._deadline = loop_time() + idle
                                        self._arm(loop)
                                kind = type(event)
                                if kind is TextDelta:
                                    if not text:
                                        attempt.record.time_to_first_token_ms = int(
                                            (time.monotonic() - attempt.started) * 1000)
                                        self.model = model  # this model is answering (no fallback from here)
                                    text.append(event.text)
                                    yield event
                                elif kind is ToolCall:
                                    tool_calls.append(event)
                                elif kind is Usage:
                                    attempt.reported = event
                                elif kind is Finished:
                                    attempt.finish = event.reason
                        except e.LLMError as exc:
                            await self._failed(attempt, exc, text, tool_calls)
                            if text:  # something reached the caller: no retry, no fallback
                                raise
                            last_error = exc
                            if not exc.retryable:
                                if isinstance(exc, _FALL_BACK_AT_ONCE):
                                    break
                                raise
                            if attempt_no == attempts:
                                break
                            delay = backoff_delay(attempt_no, getattr(exc, "retry_after", None))
                            if delay is None:
                                break
                            await asyncio.sleep(delay)
                            continue
                        except (asyncio.CancelledError, GeneratorExit):
                            await self._cancelled(attempt, text, tool_calls)
                            raise
                        except Exception as exc:  # an adapter bug must still end as a typed error, and be logged
                            await self._crashed(attempt, exc, text, tool_calls)
                            # logged with its traceback in _crashed; no vendor object crosses the interface
                            raise e.ProviderUnavailable(f"{model.provider}: unexpected error ({type(exc).__name__})",
                                                        provider=model.provider) from None
                        usage = await self._succeeded(attempt, text, tool_calls)
                        answered = attempt
                        if usage is not None:
                            yield usage
                        break
                    if answered is not None:
                        break
                if answered is None:
                    raise last_error or e.ModelUnavailable("No model can continue this conversation.")
                self.model = answered.model

                if not tool_calls:
                    yield Finished(answered.record.finish_reason)  # type: ignore[arg-type]
                    return
                toolset = self.toolset
                calls = list(tool_calls)
                if toolset is None or last_round or any(c.name not in toolset for c in calls):
                    # client-defined tools (or no more rounds): hand the calls over and stop
                    for tool_call in calls:
                        yield tool_call
                    yield Finished("tool_calls")
                    return
                messages.append(Message(role="assistant", content="".join(text), tool_calls=tuple(calls)))
                for tool_call in calls:
                    yield tool_call
                    result = await toolset.run(tool_call)
                    yield result
                    messages.append(_tool_message(result))
        finally:
            self._disarm()

    # --- bookkeeping of one attempt ----------------------------------------------------------------

    def _start(self, request: ChatRequest, model: ModelInfo, attempt_no: int, round_no: int, sha: str) -> _Attempt:
        self._calls += 1
        record = Attempt(
            request_id=request.request_id, call_id=f"{request.request_id}:{self._calls}",
            organization_id=request.organization_id, user_id=request.user_id, provider=model.provider,
            model=model.alias, vendor_model=model.vendor_model, attempt=attempt_no, round=round_no,
            started_at=timezone.now(), prompt_sha256=sha,
        )
        events = provider_get(model.provider).stream(request, model)
        return _Attempt(record=record, model=model, request=request, events=events, started=time.monotonic())

    async def _succeeded(self, attempt: _Attempt, text: list[str], tool_calls: list[ToolCall]) -> Usage | None:
        attempt.record.finish_reason = "tool_calls" if tool_calls else attempt.finish
        usage = self._bill(attempt, text, tool_calls, estimate=True)
        await self._log(attempt)
        return usage

    async def _failed(self, attempt: _Attempt, exc: e.LLMError, text: list[str], tool_calls: list[ToolCall]) -> None:
        await _close(attempt.events)
        record = attempt.record
        record.status, record.error_class, record.error_message = "error", type(exc).__name__, exc.message
        # a call that streamed, or timed out after it was sent, may have cost money
        self._bill(attempt, text, tool_calls, estimate=bool(text) or isinstance(exc, e.Timeout))
        await self._log(attempt)

    async def _cancelled(self, attempt: _Attempt, text: list[str], tool_calls: list[ToolCall]) -> None:
        self._disarm()
        await _close(attempt.events)
        attempt.record.status = attempt.record.finish_reason = "cancelled"
        self._bill(attempt, text, tool_calls, estimate=True)
        await self._log(attempt, shielded=True)

    async def _crashed(self, attempt: _Attempt, exc: Exception, text: list[str], tool_calls: list[ToolCall]) -> None:
        logger.exception("provider %s failed unexpectedly", attempt.model.provider)
        await _close(attempt.events)
        record = attempt.record
        record.status, record.error_class, record.error_message = "error", type(exc).__name__, "unexpected adapter error"
        self._bill(attempt, text, tool_calls, estimate=bool(text))
        await self._log(attempt)

    def _bill(self, attempt: _Attempt, text: list[str], tool_calls: list[ToolCall], *, estimate: bool) -> Usage | None:
        """The attempt's Usage (reported, else counted when it may have cost money), added to `usages`."""
        record, model = attempt.record, attempt.model
        if attempt.reported is not None:
            usage = replace(attempt.reported, call_id=record.call_id, model=model.alias, provider=model.provider)
        elif estimate:
            output = count_text("".join(text), model.alias) + sum(
                count_text(c.name) + count_text(c.raw_arguments or json.dumps(c.arguments)) for c in tool_calls
            )
            # The vendor bills the whole prompt it was sent, counted its way: never estimate below that.
            request = attempt.request
            tools_json = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                                     for t in request.tools]) if request.tools else ""
            prompt = prompt_tokens_bound(request.messages, tools_json=tools_json, provider=model.provider,
                                         counted=count_messages(request.messages, model.alias))
            usage = Usage(input_tokens=prompt, output_tokens=output,
                          call_id=record.call_id, model=model.alias, provider=model.provider, estimated=True)
        else:
            return None
        record.usage = usage
        self.usages.append(usage)
        return usage

    async def _log(self, attempt: _Attempt, *, shielded: bool = False) -> None:
        self.in_flight = None  # ended: billed in `usages` (or it cost nothing)
        attempt.record.duration_ms = int((time.monotonic() - attempt.started) * 1000)
        if not shielded:
            await call_log_write(attempt.record)
            return
        task = asyncio.ensure_future(call_log_write(attempt.record))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            pass  # cancelled again: the shielded write still finishes


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception as exc:
        logger.debug("closing a provider stream failed: %s", type(exc).__name__)


def _tool_message(result: ToolResult) -> Message:
    content = result.result if isinstance(result.result, str) else json.dumps(result.result, default=str)
    return Message(role="tool", content=content, tool_call_id=result.call_id, name=result.name)


def stream_chat(request: ChatRequest, *, toolset: ToolSet | None = None, max_tool_rounds: int = 5) -> ChatStream:
    """Stream one chat turn (see the module docstring). Errors are raised as llm.errors.LLMError."""
    return ChatStream(request, toolset=toolset, max_tool_rounds=max_tool_rounds)


unsupported_params = registry.unsupported_params  # re-exported: callers may ask llm.chat as well

__all__ = ["ChatStream", "InFlight", "backoff_delay", "stream_chat", "unsupported_params"]
