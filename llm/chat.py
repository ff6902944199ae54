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

Timeouts: connect (httpx), first event, and between two events — PARLEY_LLM_* settings (llm/conf.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from channels.db import database_sync_to_async
from django.utils import timezone

from llm import conf
from llm import errors as e
from llm.calllog import Attempt, call_log_write, prompt_sha256
from llm.providers import provider_get
from llm.tokens import count_messages, count_text
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


def _resolve_chain(alias: str) -> list[ModelInfo]:
    """The model and its available fallbacks, in order (sync: reads the registry rows)."""
    from llm.registry import model_find, model_get

    primary = model_get(alias)
    chain = [primary]
    for fallback in primary.fallbacks:
        info = model_find(fallback)
        if info is not None and info.available and all(info.alias != m.alias for m in chain):
            chain.append(info)
    return chain


_resolve_chain_async = database_sync_to_async(_resolve_chain)


@dataclass
class _Call:
    """What one provider call produced (the winning attempt)."""

    text: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: str = "stop"
    model: ModelInfo | None = None


class ChatStream:
    """An async iterator of StreamEvent; `usages` lists the provider calls that may cost money."""

    def __init__(self, request: ChatRequest, *, toolset: ToolSet | None = None, max_tool_rounds: int = 5) -> None:
        self.request = request
        self.toolset = toolset
        self.max_tool_rounds = max(0, max_tool_rounds)
        self.usages: list[Usage] = []
        self.model: ModelInfo | None = None  # the model that answered (last call)
        self._calls = 0
        self._events: AsyncIterator[StreamEvent] | None = None
        self._gen = self._run()
        self._closed = False

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop: the upstream connection is closed, what was used is in `usages`. Safe to repeat."""
        if self._closed:
            return
        self._closed = True
        await self._gen.aclose()

    # --- the turn ------------------------------------------------------------------------------

    async def _run(self) -> AsyncIterator[StreamEvent]:
        request = self.request
        chain = await _resolve_chain_async(request.model)
        tools = list(request.tools)
        if self.toolset is not None:
            names = {t.name for t in tools}
            tools += [spec for spec in self.toolset.specs() if spec.name not in names]
        messages = list(request.messages)
        for round_no in range(1, self.max_tool_rounds + 2):
            last_round = round_no > self.max_tool_rounds
            call_request = replace(
                request,
                messages=tuple(messages),
                tools=tuple(tools),
                tool_choice=("none" if last_round and tools and self.toolset is not None else request.tool_choice),
            )
            call = _Call()
            # aclosing: a stop (aclose) reaches the provider connection at once, not at garbage collection
            async with aclosing(self._call(call_request, chain, round_no, call)) as events:
                async for event in events:
                    yield event
            if not call.tool_calls:
                yield Finished(call.finish)  # type: ignore[arg-type]
                return
            toolset = self.toolset
            if toolset is None or last_round or any(c.name not in toolset for c in call.tool_calls):
                # client-defined tools (or no more rounds): hand the calls over and stop
                for tool_call in call.tool_calls:
                    yield tool_call
                yield Finished("tool_calls")
                return
            messages.append(Message(role="assistant", content="".join(call.text), tool_calls=tuple(call.tool_calls)))
            for tool_call in call.tool_calls:
                yield tool_call
                result = await toolset.run(tool_call)
                yield result
                messages.append(_tool_message(result))

    async def _call(self, request: ChatRequest, chain: list[ModelInfo], round_no: int, call: _Call
                    ) -> AsyncIterator[StreamEvent]:
        """One provider call: attempts, retries and fallbacks until one succeeds or all fail."""
        last_error: e.LLMError | None = None
        for model in chain:
            if not model.supports_tools and any(m.tool_calls or m.role == "tool" for m in request.messages):
                continue  # the conversation so far holds tool calls this model cannot read
            limit = model.max_output_tokens
            model_request = replace(
                request,
                max_output_tokens=min(request.max_output_tokens or limit, limit),
                tools=request.tools if model.supports_tools else (),
            )
            sha = prompt_sha256(model_request, model.vendor_model)
            attempts = conf.max_attempts()
            for attempt_no in range(1, attempts + 1):
                try:
                    async with aclosing(self._attempt(model_request, model, attempt_no, round_no, sha, call)) as events:
                        async for event in events:
                            yield event
                    self.model = model
                    return
                except e.LLMError as exc:
                    if call.text:  # something reached the caller: no retry, no fallback
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
        if last_error is None:
            last_error = e.ModelUnavailable("No model can continue this conversation.")
        raise last_error

    async def _attempt(self, request: ChatRequest, model: ModelInfo, attempt_no: int, round_no: int, sha: str,
                       call: _Call) -> AsyncIterator[StreamEvent]:
        self._calls += 1
        call_id = f"{request.request_id}:{self._calls}"
        record = Attempt(
            request_id=request.request_id, call_id=call_id, organization_id=request.organization_id,
            user_id=request.user_id, provider=model.provider, model=model.alias, vendor_model=model.vendor_model,
            attempt=attempt_no, round=round_no, started_at=timezone.now(), prompt_sha256=sha,
        )
        started = time.monotonic()
        call.text.clear()
        call.tool_calls.clear()
        text = call.text
        tool_calls = call.tool_calls
        reported: Usage | None = None
        finish = "stop"
        events = provider_get(model.provider).stream(request, model)
        self._events = events
        first_timeout, idle = conf.first_token_timeout(), conf.idle_timeout()
        wait = first_timeout
        next_event = events.__anext__
        try:
            while True:
                try:
                    async with asyncio.timeout(wait):
                        event = await next_event()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    which = "first token" if wait == first_timeout and not text else "next chunk"
                    raise e.Timeout(f"{model.provider}: no {which} within {wait:g} s", provider=model.provider)
                wait = idle
                kind = type(event)
                if kind is TextDelta:
                    if record.time_to_first_token_ms is None:
                        record.time_to_first_token_ms = int((time.monotonic() - started) * 1000)
                    text.append(event.text)
                    yield event
                elif kind is ToolCall:
                    tool_calls.append(event)  # held until the call ends, so a retry cannot repeat it
                elif kind is Usage:
                    reported = event
                elif kind is Finished:
                    finish = event.reason
        except e.LLMError as exc:
            await _close(events)
            record.status, record.error_class, record.error_message = "error", type(exc).__name__, exc.message
            self._bill(record, request, model, reported, text, tool_calls,
                       estimate=bool(text) or isinstance(exc, e.Timeout))
            await self._log(record, started)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            await _close(events)
            record.status, record.finish_reason = "cancelled", "cancelled"
            self._bill(record, request, model, reported, text, tool_calls, estimate=True)
            await self._log(record, started, shielded=True)
            raise
        except Exception as exc:  # an adapter bug must still end as a typed error, and be logged
            await _close(events)
            logger.exception("provider %s failed unexpectedly", model.provider)
            record.status, record.error_class = "error", type(exc).__name__
            record.error_message = "unexpected adapter error"
            self._bill(record, request, model, reported, text, tool_calls, estimate=bool(text))
            await self._log(record, started)
            raise e.ProviderUnavailable(f"{model.provider}: unexpected error ({type(exc).__name__})",
                                        provider=model.provider) from exc
        finally:
            self._events = None
        record.finish_reason = "tool_calls" if tool_calls else finish
        usage = self._bill(record, request, model, reported, text, tool_calls, estimate=True)
        await self._log(record, started)
        call.finish = record.finish_reason
        call.model = model
        if usage is not None:
            yield usage

    def _bill(self, record: Attempt, request: ChatRequest, model: ModelInfo, reported: Usage | None,
              text: list[str], tool_calls: list[ToolCall], *, estimate: bool) -> Usage | None:
        """The attempt's Usage (reported, else counted when it may have cost money), added to `usages`."""
        if reported is not None:
            usage = replace(reported, call_id=record.call_id, model=model.alias, provider=model.provider)
        elif estimate:
            output = count_text("".join(text), model.alias) + sum(
                count_text(c.name) + count_text(c.raw_arguments or json.dumps(c.arguments)) for c in tool_calls
            )
            usage = Usage(input_tokens=count_messages(request.messages, model.alias), output_tokens=output,
                          call_id=record.call_id, model=model.alias, provider=model.provider, estimated=True)
        else:
            return None
        record.usage = usage
        self.usages.append(usage)
        return usage

    async def _log(self, record: Attempt, started: float, *, shielded: bool = False) -> None:
        record.duration_ms = int((time.monotonic() - started) * 1000)
        if not shielded:
            await call_log_write(record)
            return
        task = asyncio.ensure_future(call_log_write(record))
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


__all__ = ["ChatStream", "backoff_delay", "stream_chat"]
