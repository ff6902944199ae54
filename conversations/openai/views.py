"""The OpenAI-compatible endpoint: `POST /v1/chat/completions`, `GET /v1/models` (+ `/v1/models/<id>`).

Any OpenAI client library can point at Parley (`base_url=http://host/v1`, `api_key=<Parley API key>`).
Answers follow OpenAI's shapes: the `chat.completion` object, the `chat.completion.chunk` SSE stream
ending in `data: [DONE]`, and OpenAI's error object with the matching HTTP status.

The views parse (conversations.openai.schemas), call the turn engine (conversations.engine) and
render (conversations.openai.shapes). The engine authorizes the call (plan, context window, rate
limit, reservation), streams it in a task of its own and settles it once, however it ends.

An answer that fails after it began is an error the client's SDK raises, never a normal end:
without `stream` the answer is the error object with its status (502 `provider_error` …); with
`stream`, the error object is the last event (`data: {"error": …}`), with no finish_reason, usage
or `[DONE]` after it. Either way what was generated is billed.

By default nothing is stored but the call log and the ledger. To keep the exchange as a Parley
conversation, send the header `X-Parley-Conversation: new` (or the id of one of your conversations):
the last user message is then sent as a turn of that conversation, whose stored history is the
context (earlier messages of the request are not used), and the answer names the conversation in
the `X-Parley-Conversation` response header. `metadata: {"parley_conversation": "new" | "<uuid>"}`
in the body does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.errors import Unauthenticated
from accounts.selectors import api_key_authenticate, bearer_secret
from config.errors import ParleyError, database_unavailable, log_database_unavailable, openai_error_parts
from conversations import engine
from conversations import hub as hub_module
from conversations.db import db_async
from conversations.openai import shapes
from conversations.openai.schemas import (
    MAX_BODY_BYTES,
    ChatCompletionBody,
    UserMessage,
    body_too_large,
    chat_body_parse,
)
from conversations.sse import sse_response
from llm.types import ChatRequest, TextDelta, ToolCall

logger = logging.getLogger(__name__)

CONVERSATION_HEADER = "X-Parley-Conversation"
ANSWER_WAIT_SECONDS = 300.0

# Parameters a conversation turn cannot take: the conversation's own settings and history apply.
CONVERSATION_REFUSES = (
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "stop", "seed", "temperature", "top_p",
    "presence_penalty", "frequency_penalty", "max_tokens", "max_completion_tokens", "user",
)  # fmt: skip


class MissingApiKey(Unauthenticated):
    """You didn't provide an API key. Send it as `Authorization: Bearer <key>`."""

    code = "missing_api_key"


def error_response(err: ParleyError, *, headers: dict[str, str] | None = None) -> JsonResponse:
    status, body, error_headers = openai_error_parts(err)
    return JsonResponse(body, status=status, headers={**error_headers, **(headers or {})})


def method_not_allowed(allowed: str) -> JsonResponse:
    return error_response(ParleyError(f"Use {allowed} here.", code="method_not_allowed"), headers={"Allow": allowed})


def openai_view(view):
    """An async /v1/ view: CSRF-exempt (API keys only). A database that is unavailable (a PostgreSQL
    restart or outage, the pool's timeout) answers 503 `service_unavailable` with `Retry-After`; a bug
    answers OpenAI's error object (logged)."""

    @csrf_exempt
    @functools.wraps(view)
    async def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except ParleyError as err:
            return error_response(err)
        except Exception as exc:
            outage = database_unavailable(exc)
            if outage is not None:
                log_database_unavailable(exc, "/v1")
                return error_response(outage)
            logger.exception("%s %s failed", request.method, request.path)
            return error_response(ParleyError("Internal error.", code="internal_error"))

    return wrapped


def _secret(request: HttpRequest) -> str:
    secret = bearer_secret(request.headers.get("Authorization"))
    if secret is None:
        raise MissingApiKey()
    return secret


def _body_bytes(request: HttpRequest) -> bytes:
    """The raw body, at most MAX_BODY_BYTES.

    Not `request.body`: it refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) with Django's
    HTML 400 page. The ASGI handler has the whole body in a (spooled) file already.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        raise body_too_large(declared)
    data = request.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise body_too_large()
    return data


def _authenticate_sync(secret: str):
    return api_key_authenticate(secret=secret)


_authenticate = db_async(_authenticate_sync)


async def _detached(coroutine) -> Any:
    """Run in a fresh context as a task of its own: a client that goes away does not cut it short."""
    task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
    return await asyncio.shield(task)


# --- /v1/models -------------------------------------------------------------------------------


def _models_sync(secret: str) -> list[dict]:
    from conversations.api import models_for_membership

    _, membership = api_key_authenticate(secret=secret)
    return models_for_membership(membership)


def _model_object(row: dict) -> dict:
    return {"id": row["alias"], "object": "model", "created": 0, "owned_by": row["provider"]}


@openai_view
async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return method_not_allowed("GET")
    try:
        rows = await db_async(_models_sync)(_secret(request))
    except ParleyError as err:
        return error_response(err)
    return JsonResponse({"object": "list", "data": [_model_object(row) for row in rows]})


@openai_view
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    if request.method != "GET":
        return method_not_allowed("GET")
    try:
        rows = await db_async(_models_sync)(_secret(request))
    except ParleyError as err:
        return error_response(err)
    for row in rows:
        if row["alias"] == model_id:
            return JsonResponse(_model_object(row))
    return error_response(
        ParleyError(
            f"The model `{model_id[:200]}` does not exist or you do not have access to it.",
            code="model_not_allowed",
        )
    )


# --- /v1/chat/completions: stateless -----------------------------------------------------------


def _chat_request(body: ChatCompletionBody, request_id: str) -> ChatRequest:
    """The body as the engine's request: every forwarded parameter with OpenAI's meaning."""
    return ChatRequest(
        model=body.model,
        messages=body.llm_messages(),
        request_id=request_id,
        tools=body.llm_tools(),
        tool_choice=body.llm_tool_choice(),
        max_output_tokens=body.output_limit,
        temperature=body.temperature,
        stop=body.llm_stop(),
        response_format=body.llm_response_format(),
        seed=body.seed,
        top_p=body.top_p,
        user=body.user,
        parallel_tool_calls=body.parallel_tool_calls,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )


def _authenticate_and_prepare(*, secret: str, body: ChatCompletionBody, request_id: str) -> engine.Prepared:
    """The key, its member and the engine's authorization, in one trip to a database thread (the hot path)."""
    key, membership = api_key_authenticate(secret=secret)
    structlog.contextvars.bind_contextvars(organization_id=str(membership.organization_id))  # the logs' context
    return engine.turn_prepare(
        caller=engine.Caller(membership=membership, api_key=key, entry="v1"), request=_chat_request(body, request_id)
    )


_authenticate_and_prepare_async = db_async(_authenticate_and_prepare)


async def _open(*, secret: str, body: ChatCompletionBody, request_id: str) -> tuple[engine.BilledStream, asyncio.Queue]:
    prepared = await _authenticate_and_prepare_async(secret=secret, body=body, request_id=request_id)
    sink = engine.QueueSink()
    billed = engine.BilledStream(prepared, sink)
    billed.start()
    return billed, sink.queue


async def _open_detached(**kwargs) -> tuple[engine.BilledStream, asyncio.Queue]:
    """Authorize and start; a client gone meanwhile stops the call once it started (its reservation
    is released by the settlement, not left to expire)."""
    task = asyncio.get_running_loop().create_task(_open(**kwargs), context=contextvars.Context())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_cancel_started)
        raise


def _cancel_started(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result()[0].cancel()


async def _batches(queue: asyncio.Queue) -> AsyncIterator[list]:
    """The QueueSink's items in lists (all that wait at once: one write under load, no added delay);
    the last list ends with the Outcome."""
    while True:
        item = await queue.get()
        batch = [item]
        while type(item) is not engine.Outcome and not queue.empty():
            item = queue.get_nowait()
            batch.append(item)
        yield batch
        if type(item) is engine.Outcome:
            return


def _failed(outcome: engine.Outcome) -> ParleyError | None:
    """The error to answer for an outcome that is not a normal end (None: it is one)."""
    if outcome.status == "complete" and outcome.error is None:
        return None
    if outcome.error is not None:
        return outcome.error
    return ParleyError("The answer was stopped before it ended.", code="interrupted")


@openai_view
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return method_not_allowed("POST")
    try:
        secret = _secret(request)
        problem: ParleyError | None = None
        body: ChatCompletionBody | None = None
        target = None
        try:
            body = chat_body_parse(_body_bytes(request))
            target = _conversation_target(request, body)
        except ParleyError as err:
            problem = err
        if problem is not None or target is not None:
            key, membership = await _authenticate(secret)  # a bad key is a 401 whatever the body
            if problem is not None:
                raise problem
            return await _conversation_turn(membership=membership, key=key, body=body, target=target)
        assert body is not None
        billed, queue = await _open_detached(secret=secret, body=body, request_id="chatcmpl-" + uuid.uuid4().hex)
    except ParleyError as err:
        return error_response(err)
    batches = _batches(queue)
    try:
        # The first events (or the end): an error before any output still gets its HTTP status.
        first = await anext(batches)
    except asyncio.CancelledError:
        billed.cancel()
        raise
    if type(first[0]) is engine.Outcome and (error := _failed(first[0])) is not None:
        return error_response(error)
    created = shapes.created_now()
    if body.stream:
        return sse_response(_chunks(billed, batches, first, body=body, created=created))
    return await _completion(billed, batches, first, created=created)


async def _completion(billed: engine.BilledStream, batches: AsyncIterator[list], first: list, *, created: int) -> HttpResponse:
    outcome = first[-1]
    try:
        async for batch in batches:  # until the Outcome (the events are in it too)
            outcome = batch[-1]
    except asyncio.CancelledError:
        billed.cancel()  # the client went away: stop; what was generated is billed
        raise
    assert type(outcome) is engine.Outcome
    error = _failed(outcome)
    if error is not None:
        # Failed midway: the SDK raises this (the partial answer is billed, and not passed off as whole).
        return error_response(error)
    calls = outcome.tool_calls
    return JsonResponse(
        shapes.completion_body(
            completion_id=billed.id,
            created=created,
            model=outcome.model,
            text=outcome.text,
            tool_calls=calls,
            finish=shapes.finish_reason(outcome.finish_reason, tool_calls=bool(calls)),
            usage=shapes.usage_body(outcome.usages),
        )
    )


async def _chunks(
    billed: engine.BilledStream, batches: AsyncIterator[list], first: list, *, body: ChatCompletionBody, created: int
) -> AsyncIterator[bytes]:
    writer = shapes.ChunkWriter(
        completion_id=billed.id, created=created, model=body.model, include_usage=body.include_usage
    )
    ended = False
    try:
        writer.model = billed.model  # the first events are in: a fallback that answers is known by now
        out = [writer.head()]
        batch: list | None = first
        while batch is not None:
            for item in batch:
                kind = type(item)
                if kind is TextDelta:
                    out.append(writer.text(item.text))
                elif kind is ToolCall:
                    out.append(writer.tool_call(item))
                elif kind is engine.Outcome:
                    ended = True
                    error = _failed(item)
                    if error is not None:
                        out.append(shapes.error_event(error))  # the SDK raises it; nothing follows
                    else:
                        writer.model = item.model
                        finish = shapes.finish_reason(item.finish_reason, tool_calls=bool(item.tool_calls))
                        out.append(writer.end(finish, shapes.usage_body(item.usages)))
            yield b"".join(out)
            out = []
            batch = await anext(batches, None)
    finally:
        if not ended:
            billed.cancel()  # the client went away: stop the call; it settles what was used, once


# --- /v1/chat/completions: a turn of a Parley conversation ---------------------------------------


def _conversation_target(request: HttpRequest, body: ChatCompletionBody) -> str | None:
    value = request.headers.get(CONVERSATION_HEADER)
    param = None
    if value is None:
        value, param = body.conversation, "metadata.parley_conversation"
    if not value:
        return None
    if value == "new":
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ParleyError(
            f"{CONVERSATION_HEADER} must be `new` or a conversation id.", code="invalid_conversation", param=param
        ) from None


def _conversation_content(body: ChatCompletionBody) -> str:
    for name in CONVERSATION_REFUSES:
        if getattr(body, name) is not None and name in body.model_fields_set:
            raise ParleyError(
                f"`{name}` cannot be used in a Parley conversation ({CONVERSATION_HEADER}): the conversation's "
                "own settings apply.",
                code="unsupported_parameter",
                param=name,
            )
    last = body.messages[-1]
    index = len(body.messages) - 1
    content = last.to_llm().content if isinstance(last, UserMessage) else ""
    if not content.strip():
        raise ParleyError(
            "The last message must be a non-empty user message.", code="invalid_value", param=f"messages[{index}]"
        )
    if "\x00" in content:
        raise ParleyError(
            "A message kept in a conversation cannot contain NUL characters.",
            code="invalid_value",
            param=f"messages[{index}].content",
        )
    return content


async def _conversation_turn(*, membership, key, body: ChatCompletionBody, target: str) -> HttpResponse:
    from conversations.turns import generation_wait, turn_start

    content = _conversation_content(body)
    subscriber = hub_module.QueueSubscriber() if body.stream else None
    started = await _detached(
        turn_start(
            membership=membership,
            api_key=key,
            conversation_id=None if target == "new" else uuid.UUID(target),
            content=content,
            model=body.model,
            client_id=uuid.uuid4(),
            subscriber=subscriber,
        )
    )
    answer = started.assistant_message
    completion_id, created = "chatcmpl-" + answer.id.hex, shapes.created_now()
    headers = {CONVERSATION_HEADER: str(started.conversation.id)}
    if subscriber is not None:
        frames = _answer_frames(subscriber, started.conversation.id, str(answer.id))
        return sse_response(_conversation_chunks(frames, body, completion_id, created), headers=headers)
    # A client that goes away meanwhile only stops waiting: the turn goes on, is saved and billed once.
    try:
        async with asyncio.timeout(ANSWER_WAIT_SECONDS):
            answer = await generation_wait(answer.id)
    except TimeoutError:
        return error_response(ParleyError("The answer took too long.", code="provider_timeout"), headers=headers)
    if answer.error_code:
        return error_response(
            ParleyError(answer.error_message or "The answer failed.", code=answer.error_code), headers=headers
        )
    return JsonResponse(
        shapes.completion_body(
            completion_id=completion_id,
            created=created,
            model=answer.model or body.model,  # the model that answered (a fallback's, when one did)
            text=answer.content,
            tool_calls=[],
            finish=shapes.finish_reason(getattr(answer, "finish_reason", None), tool_calls=False),
            usage=shapes.usage_from_counts(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens),
        ),
        headers=headers,
    )


async def _answer_frames(subscriber: hub_module.QueueSubscriber, conversation_id, answer_id: str) -> AsyncIterator[dict]:
    """This answer's `delta` frames, then its `generation.finished`."""
    try:
        while True:
            frame = await subscriber.queue.get()
            kind = frame.get("type")
            if kind == "delta" and frame.get("message") == answer_id:
                yield frame
            elif kind == "generation.finished" and frame["message"]["id"] == answer_id:
                yield frame
                return
    finally:
        with contextlib.suppress(Exception):
            await hub_module.default().unfollow(subscriber, conversation_id)


def _message_error(message: dict) -> ParleyError | None:
    error = message.get("error")
    if not error:
        return None
    return ParleyError(error.get("message") or "The answer failed.", code=error.get("code") or "provider_error")


def _message_usage(message: dict) -> dict:
    usage = message.get("usage") or {}
    return shapes.usage_from_counts(
        input_tokens=usage.get("input_tokens") or 0, output_tokens=usage.get("output_tokens") or 0
    )


async def _conversation_chunks(frames: AsyncIterator[dict], body: ChatCompletionBody, completion_id: str, created: int):
    writer = shapes.ChunkWriter(
        completion_id=completion_id, created=created, model=body.model, include_usage=body.include_usage
    )
    try:
        yield writer.head()
        async for frame in frames:
            if frame["type"] == "delta":
                yield writer.text(frame["text"])
                continue
            message = frame["message"]
            error = _message_error(message)
            if error is not None:
                yield shapes.error_event(error)
                return
            writer.model = message.get("model") or body.model
            finish = shapes.finish_reason(message.get("finish_reason"), tool_calls=False)
            yield writer.end(finish, _message_usage(message))
            return
    finally:
        # a client that goes away only stops following: the answer goes on, is saved and billed once
        await frames.aclose()


__all__ = ["chat_completions", "model_detail", "models"]
