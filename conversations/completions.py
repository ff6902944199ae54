"""The chat turn of the OpenAI-compatible endpoint (`POST /v1/chat/completions`).

Stateless by default: the client's `messages` are the prompt and nothing is stored but the call log
and the ledger. The same rules as every other turn apply: billing.turn_authorize (tier, lengths, rate
limits, budget reservation) before the call, llm.stream_chat for the call (retries, fallbacks, call
log), billing.turn_settle after it. Client-defined `tools` go to the model and its tool calls come
back to the client (no toolset: llm does not run them).

The call runs as a task of its own in a fresh context (`CompletionRun`); the HTTP response reads
its events from a queue. A client that goes away cancels the task, which closes the provider stream
and settles what was used, exactly once, in a shielded task that outlives the cancellation. The
settlement runs after the answer's last event is handed to the client (the usage is known by then),
so its database work adds nothing to the client's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from channels.db import database_sync_to_async

from accounts.errors import ParleyError
from accounts.models import ApiKey, Membership
from accounts.selectors import api_key_authenticate
from llm.errors import LLMError
from llm.types import ChatRequest, Finished, TextDelta, ToolCall, ToolSpec, Usage
from llm.types import Message as LLMMessage

logger = logging.getLogger(__name__)

# Strong references to running calls and settlements (a task only the loop references can be collected).
_tasks: set[asyncio.Task] = set()

_DONE = object()


def _keep(task: asyncio.Task) -> asyncio.Task:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


class CompletionError(Exception):
    """An OpenAI error object: `{"error": {"message", "type", "code", "param"}}` with its HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def completion_error_from(exc: BaseException, *, model: str = "") -> CompletionError:
    """Parley's and llm's errors as OpenAI error objects (status, type and code as OpenAI answers them)."""
    if isinstance(exc, CompletionError):
        return exc
    if isinstance(exc, ParleyError):
        code = exc.code
        if code == "unauthenticated":
            return CompletionError(exc.message, status=401, code="invalid_api_key")
        if code == "model_not_allowed":
            return CompletionError(
                f"The model `{model}` does not exist or you do not have access to it. {exc.message}".strip(),
                status=404,
                code="model_not_found",
                param="model",
            )
        if code == "rate_limited":
            return CompletionError(exc.message, status=429, type="requests", code="rate_limit_exceeded", retry_after=exc.retry_after)
        if code == "budget_exceeded":
            return CompletionError(
                exc.message, status=429, type="insufficient_quota", code="budget_exceeded", retry_after=exc.retry_after
            )
        if code == "message_too_long":
            return CompletionError(exc.message, status=400, code="message_too_long", param="messages")
        if code == "not_found":
            return CompletionError(exc.message, status=404, code="not_found")
        if code == "busy":
            return CompletionError(exc.message, status=409, code="busy")
        if code == "permission_denied":
            return CompletionError(exc.message, status=403, code="permission_denied")
        return CompletionError(exc.message, status=400, code=code)
    if isinstance(exc, LLMError):
        from llm import errors

        if isinstance(exc, errors.ModelUnavailable):
            return CompletionError(
                f"The model `{model}` does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )
        if isinstance(exc, errors.ContextTooLong):
            return CompletionError(exc.message, status=400, code="context_length_exceeded", param="messages")
        if isinstance(exc, errors.InvalidRequest):
            return CompletionError(exc.message, status=400, code="invalid_request")
        if isinstance(exc, errors.RateLimited):
            return CompletionError(
                "The model's provider is rate limiting; try again shortly.",
                status=429,
                type="requests",
                code="provider_rate_limited",
                retry_after=exc.retry_after or 1,
            )
        if isinstance(exc, errors.Timeout):
            return CompletionError("The model's provider timed out.", status=504, type="api_error", code="provider_timeout")
        return CompletionError(
            f"The model's provider failed: {exc.message}", status=502, type="api_error", code="provider_error"
        )
    return CompletionError("Internal error.", status=500, type="api_error", code="internal_error")


# --- the request ------------------------------------------------------------------------------

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_MESSAGES = 2_000


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    messages: tuple[LLMMessage, ...]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    last_user_content: str = ""


def _text_content(value: Any, param: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise CompletionError("Only text content parts are supported.", param=f"{param}[{index}]")
            text = part.get("text")
            if not isinstance(text, str):
                raise CompletionError("A text part needs a `text` string.", param=f"{param}[{index}].text")
            parts.append(text)
        return "".join(parts)
    raise CompletionError("`content` must be a string or a list of text parts.", param=param)


def _tool_call(raw: Any, param: str) -> ToolCall:
    if not isinstance(raw, dict) or not isinstance(raw.get("function"), dict):
        raise CompletionError("A tool call needs `id` and `function`.", param=param)
    function = raw["function"]
    name, arguments, call_id = function.get("name"), function.get("arguments", "{}"), raw.get("id")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise CompletionError("A tool call needs an `id` and a `function.name`.", param=param)
    if isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, arguments=arguments)
    if not isinstance(arguments, str):
        raise CompletionError("`function.arguments` must be a JSON string.", param=f"{param}.function.arguments")
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return ToolCall(id=call_id, name=name, arguments={}, raw_arguments=arguments)
    if not isinstance(parsed, dict):
        return ToolCall(id=call_id, name=name, arguments={}, raw_arguments=arguments)
    return ToolCall(id=call_id, name=name, arguments=parsed)


def _message(raw: Any, index: int) -> LLMMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise CompletionError("Each message must be an object.", param=param)
    role = raw.get("role")
    if role not in ROLES:
        raise CompletionError(f"Unknown role {role!r}.", param=f"{param}.role")
    content = _text_content(raw.get("content"), f"{param}.content")
    if role in ("system", "developer"):
        return LLMMessage(role="system", content=content)
    if role == "user":
        return LLMMessage(role="user", content=content)
    if role == "assistant":
        calls = raw.get("tool_calls") or []
        if not isinstance(calls, list):
            raise CompletionError("`tool_calls` must be a list.", param=f"{param}.tool_calls")
        return LLMMessage(
            role="assistant",
            content=content,
            tool_calls=tuple(_tool_call(call, f"{param}.tool_calls[{i}]") for i, call in enumerate(calls)),
        )
    call_id = raw.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise CompletionError("A tool message needs `tool_call_id`.", param=f"{param}.tool_call_id")
    name = raw.get("name")
    return LLMMessage(role="tool", content=content, tool_call_id=call_id, name=name if isinstance(name, str) else None)


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CompletionError("`tools` must be a list.", param="tools")
    specs = []
    for index, tool in enumerate(raw):
        param = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
            raise CompletionError("Only function tools are supported.", param=param)
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise CompletionError("A function tool needs a `name`.", param=f"{param}.function.name")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise CompletionError("`parameters` must be a JSON schema object.", param=f"{param}.function.parameters")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise CompletionError("`description` must be a string.", param=f"{param}.function.description")
        specs.append(ToolSpec(name=name, description=description, parameters=parameters))
    return tuple(specs)


def _tool_choice(raw: Any, tools: tuple[ToolSpec, ...]) -> str | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict) and isinstance(raw["function"].get("name"), str):
        name = raw["function"]["name"]
        if name not in {tool.name for tool in tools}:
            raise CompletionError(f"`tool_choice` names an unknown tool {name!r}.", param="tool_choice")
        return name
    raise CompletionError("`tool_choice` must be auto, none, required or a function.", param="tool_choice")


def _positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CompletionError(f"`{name}` must be a positive integer.", param=name)
    return value


def parse_request(body: Any) -> CompletionRequest:
    """Validate an OpenAI chat-completions body (unknown fields are ignored, as OpenAI's clients send many)."""
    if not isinstance(body, dict):
        raise CompletionError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise CompletionError("`model` is required.", param="model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise CompletionError("`messages` must be a non-empty list.", param="messages")
    if len(raw_messages) > MAX_MESSAGES:
        raise CompletionError(f"At most {MAX_MESSAGES} messages.", param="messages")
    messages = tuple(_message(raw, index) for index, raw in enumerate(raw_messages))
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise CompletionError("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise CompletionError("`stream_options` must be an object.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise CompletionError("`include_usage` must be a boolean.", param="stream_options.include_usage")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2
    ):
        raise CompletionError("`temperature` must be a number from 0 to 2.", param="temperature")
    n = body.get("n")
    if n not in (None, 1):
        raise CompletionError("Only `n: 1` is supported.", param="n")
    tools = _tools(body.get("tools"))
    users = [m for m in messages if m.role == "user"]
    return CompletionRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        last_user_content=users[-1].content if users else "",
    )


# --- the call ---------------------------------------------------------------------------------


def _prompt_tokens(messages: tuple[LLMMessage, ...], tools: tuple[ToolSpec, ...], model: str) -> int:
    from llm.tokens import count_message, count_text

    total = sum(count_message(message) for message in messages)
    if tools:
        total += count_text(json.dumps([t.__dict__ for t in tools], default=str), model)
    return total


def _authorize(*, membership: Membership, api_key: ApiKey | None, request: CompletionRequest, request_id: str):
    from billing.services import turn_authorize

    # An alias the tier lacks is refused here (model_not_allowed → 404 model_not_found); one that is
    # allowed but not configured fails in llm before any output (ModelUnavailable → the same 404).
    return turn_authorize(
        membership=membership,
        api_key=api_key,
        model=request.model,
        prompt_tokens=_prompt_tokens(request.messages, request.tools, request.model),
        message_chars=len(request.last_user_content),
        max_output_tokens=request.max_tokens,
        request_id=request_id,
    )


def _settle(*, authorization, usages: list[Usage], membership: Membership, api_key: ApiKey | None) -> Decimal:
    from billing.services import turn_settle

    return turn_settle(authorization=authorization, usages=usages, membership=membership, api_key=api_key)


def _authenticate_and_authorize(*, secret: str, request: CompletionRequest, request_id: str):
    """The key, its member and the authorization, in one trip to a database thread (the hot path)."""
    key, membership = api_key_authenticate(secret=secret)
    return key, membership, _authorize(membership=membership, api_key=key, request=request, request_id=request_id)


# Independent short transactions: the thread pool, not the one shared database thread.
_authenticate_and_authorize_async = database_sync_to_async(_authenticate_and_authorize, thread_sensitive=False)
_settle_async = database_sync_to_async(_settle, thread_sensitive=False)


@dataclass
class CompletionRun:
    """One OpenAI-compatible call: authorized, streaming in its own task, settled once."""

    membership: Membership
    api_key: ApiKey | None
    request: CompletionRequest
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.usages: list[Usage] = []
        self.finish_reason: str | None = None
        self.cost: Decimal | None = None
        self.task: asyncio.Task | None = None
        self._settled = False

    @classmethod
    async def open(cls, *, secret: str, request: CompletionRequest) -> CompletionRun:
        """Authenticate the key and authorize the call (raising Parley's refusals), then start it."""
        request_id = "chatcmpl-" + uuid.uuid4().hex
        key, membership, authorization = await _authenticate_and_authorize_async(
            secret=secret, request=request, request_id=request_id
        )
        run = cls(membership=membership, api_key=key, request=request, id=request_id)
        run.authorization = authorization
        run.task = _keep(asyncio.get_running_loop().create_task(run._run(), context=contextvars.Context()))
        return run

    async def start(self) -> None:
        """Authorize (raising Parley's refusals), then start the call as a task of its own."""
        self.authorization = await database_sync_to_async(_authorize, thread_sensitive=False)(
            membership=self.membership, api_key=self.api_key, request=self.request, request_id=self.id
        )
        self.task = _keep(
            asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())
        )

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _run(self) -> None:
        from llm.chat import stream_chat

        request = self.request
        chat = ChatRequest(
            model=request.model,
            messages=request.messages,
            request_id=self.id,
            tools=request.tools,
            tool_choice=request.tool_choice,
            max_output_tokens=self.authorization.max_output_tokens,
            temperature=request.temperature,
            organization_id=self.membership.organization_id,
            user_id=self.membership.user_id,
        )
        stream = None
        try:
            stream = stream_chat(chat)
            async for event in stream:
                kind = type(event)
                if kind is TextDelta:
                    if event.text:
                        self.queue.put_nowait(event)
                elif kind is ToolCall:
                    self.queue.put_nowait(event)
                elif kind is Finished:
                    self.finish_reason = event.reason
        except asyncio.CancelledError:
            self.finish_reason = self.finish_reason or "cancelled"
            raise
        except Exception as exc:  # handed to the response (an error object, or an error event mid-stream)
            if not isinstance(exc, LLMError):
                logger.exception("completion %s failed", self.id)
            self.queue.put_nowait(exc)
        finally:
            finish = _keep(asyncio.ensure_future(self._finish(stream)))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(finish)

    async def _finish(self, stream) -> None:
        """Close the provider stream, end the answer for the client, then settle (once, off its path)."""
        if stream is not None:
            try:
                await stream.aclose()  # the provider stops generating
            except Exception:
                logger.warning("closing the provider stream of %s failed", self.id, exc_info=True)
            self.usages = list(getattr(stream, "usages", []) or [])
        self.queue.put_nowait(_DONE)
        if self._settled:
            return
        self._settled = True
        try:
            self.cost = await _settle_async(
                authorization=self.authorization, usages=self.usages, membership=self.membership, api_key=self.api_key
            )
        except Exception:
            # The reservation expires on its own; the call log keeps the usage.
            logger.exception("settling completion %s failed", self.id)

    async def batches(self):
        """Lists of events (everything waiting at once: one write under load, no added delay).

        Items are TextDelta and ToolCall events, then an exception instance if the call failed.
        Ends once the call is settled.
        """
        while True:
            item = await self.queue.get()
            if item is _DONE:
                return
            batch = [item]
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if item is _DONE:
                    yield batch
                    return
                batch.append(item)
            yield batch

    def usage_body(self) -> dict:
        prompt = sum(u.input_tokens for u in self.usages)
        completion = sum(u.output_tokens for u in self.usages)
        cached = sum(u.cached_input_tokens for u in self.usages)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


def openai_finish_reason(reason: str | None, has_tool_calls: bool) -> str:
    if has_tool_calls or reason == "tool_calls":
        return "tool_calls"
    if reason in ("length", "content_filter"):
        return reason
    return "stop"


def tool_call_body(call: ToolCall, index: int | None = None) -> dict:
    body: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {
            "name": call.name,
            "arguments": call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments),
        },
    }
    if index is not None:
        body = {"index": index, **body}
    return body
