"""The OpenAI-compatible endpoint: `POST /v1/chat/completions` and `GET /v1/models` (+ `/v1/models/<id>`).

Any OpenAI client library can point at Parley (`base_url=http://host/v1`, `api_key=<Parley API key>`).
Answers follow OpenAI's shapes: the `chat.completion` object, the `chat.completion.chunk` SSE stream
ending in `data: [DONE]`, and OpenAI's error object with the matching HTTP status.

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
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.errors import ParleyError
from accounts.selectors import api_key_authenticate, bearer_secret
from conversations import hub as hub_module
from conversations.completions import (
    CompletionError,
    CompletionRequest,
    CompletionRun,
    completion_error_from,
    openai_finish_reason,
    parse_request,
    tool_call_body,
)
from conversations.sse import sse_response
from llm.types import TextDelta, ToolCall

CONVERSATION_HEADER = "X-Parley-Conversation"
MAX_BODY_BYTES = 4 * 1024 * 1024
ANSWER_WAIT_SECONDS = 300.0


def error_response(error: CompletionError) -> JsonResponse:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(-(-error.retry_after // 1))))
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="parley"'
    return JsonResponse(error.body(), status=error.status, headers=headers)


def _json_line(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _authenticate_sync(header: str | None):
    secret = bearer_secret(header)
    if secret is None:
        raise CompletionError(
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            status=401,
            code="missing_api_key",
        )
    return api_key_authenticate(secret=secret)


_authenticate = database_sync_to_async(_authenticate_sync, thread_sensitive=False)


def _method_not_allowed(allowed: str) -> JsonResponse:
    response = error_response(CompletionError(f"Use {allowed} here.", status=405, code="method_not_allowed"))
    response["Allow"] = allowed
    return response


async def _member(request: HttpRequest):
    try:
        return await _authenticate(request.headers.get("Authorization"))
    except ParleyError as exc:
        raise completion_error_from(exc) from None


# --- /v1/models -------------------------------------------------------------------------------


def _models_sync(membership) -> list[dict]:
    from conversations.api import models_for_membership

    return models_for_membership(membership)


def _model_object(row: dict) -> dict:
    return {"id": row["alias"], "object": "model", "created": 0, "owned_by": row["provider"]}


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        _, membership = await _member(request)
    except CompletionError as error:
        return error_response(error)
    rows = await database_sync_to_async(_models_sync, thread_sensitive=False)(membership)
    return JsonResponse({"object": "list", "data": [_model_object(row) for row in rows]})


@csrf_exempt
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        _, membership = await _member(request)
    except CompletionError as error:
        return error_response(error)
    rows = await database_sync_to_async(_models_sync, thread_sensitive=False)(membership)
    for row in rows:
        if row["alias"] == model_id:
            return JsonResponse(_model_object(row))
    return error_response(
        CompletionError(f"The model `{model_id}` does not exist or you do not have access to it.", status=404, code="model_not_found", param="model")
    )


# --- /v1/chat/completions ---------------------------------------------------------------------


def _conversation_target(request: HttpRequest, body: dict) -> str | None:
    value = request.headers.get(CONVERSATION_HEADER)
    metadata = body.get("metadata")
    if value is None and isinstance(metadata, dict):
        value = metadata.get("parley_conversation")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CompletionError("The conversation must be `new` or a conversation id.", param="metadata")
    if value == "new":
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise CompletionError(
            f"{CONVERSATION_HEADER} must be `new` or a conversation id.", status=400, code="invalid_conversation"
        ) from None


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    model = ""
    try:
        secret = bearer_secret(request.headers.get("Authorization"))
        if secret is None:
            await _member(request)  # raises the 401
        problem, target = None, None
        try:
            if len(request.body) > MAX_BODY_BYTES:
                raise CompletionError("The request body is too large.", status=413, code="payload_too_large")
            try:
                body = json.loads(request.body or b"null")
            except ValueError:
                raise CompletionError("The body is not valid JSON.") from None
            parsed = parse_request(body)
            model = parsed.model
            target = _conversation_target(request, body)
        except CompletionError as error:
            problem = error
        if problem is not None or target is not None:
            key, membership = await _member(request)  # a bad key is 401 whatever the body
            if problem is not None:
                raise problem
            return await _conversation_turn(membership, key, parsed, target)
        # The hot path: the key, the rules and the reservation in one trip to the database.
        run = await asyncio.shield(CompletionRun.open(secret=secret, request=parsed))
    except CompletionError as error:
        return error_response(error)
    except ParleyError as exc:
        return error_response(completion_error_from(exc, model=model))
    except Exception as exc:
        from llm.errors import LLMError

        if isinstance(exc, LLMError):
            return error_response(completion_error_from(exc, model=model))
        raise
    batches = run.batches()
    try:
        # Wait for the first events, so an error before any output still gets its HTTP status.
        first = await anext(batches, None) or []
    except asyncio.CancelledError:
        run.cancel()
        raise
    if first and isinstance(first[0], BaseException):
        await _drain(batches)
        return error_response(completion_error_from(first[0], model=model))
    if parsed.stream:
        return sse_response(_chunks(run, batches, first))
    return await _completion(run, batches, first)


async def _drain(batches: AsyncIterator) -> None:
    async for _ in batches:
        pass


async def _completion(run: CompletionRun, batches: AsyncIterator, first: list) -> HttpResponse:
    texts: list[str] = []
    calls: list[ToolCall] = []
    error = None
    try:
        batch = first
        while batch is not None:
            for item in batch:
                if isinstance(item, TextDelta):
                    texts.append(item.text)
                elif isinstance(item, ToolCall):
                    calls.append(item)
                elif isinstance(item, BaseException):
                    error = item
            batch = await anext(batches, None)
    except asyncio.CancelledError:
        run.cancel()
        raise
    if error is not None and not texts and not calls:
        return error_response(completion_error_from(error, model=run.request.model))
    return JsonResponse(
        completion_body(
            run.id, run.created, run.request.model, "".join(texts), calls,
            openai_finish_reason(run.finish_reason, bool(calls)), run.usage_body(),
        )  # fmt: skip
    )


def completion_body(
    run_id: str, created: int, model: str, text: str, calls: list[ToolCall], finish: str, usage: dict
) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = [tool_call_body(call) for call in calls]
    return {
        "id": run_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "system_fingerprint": None,
    }


def _chunk(run_id: str, created: int, model: str, delta: dict, finish: str | None, include_usage: bool) -> dict:
    chunk: dict[str, Any] = {
        "id": run_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def _usage_chunk(run_id: str, created: int, model: str, usage: dict) -> bytes:
    return _json_line(
        {
            "id": run_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage,
        }
    )


async def _chunks(run: CompletionRun, batches: AsyncIterator, first: list) -> AsyncIterator[bytes]:
    request = run.request
    model, include_usage = request.model, request.include_usage
    tool_index = 0
    try:
        head = _json_line(_chunk(run.id, run.created, model, {"role": "assistant", "content": ""}, None, include_usage))
        batch = first
        while batch is not None:
            out = [head] if head else []
            head = b""
            for event in batch:
                if isinstance(event, TextDelta):
                    out.append(_json_line(_chunk(run.id, run.created, model, {"content": event.text}, None, include_usage)))
                elif isinstance(event, ToolCall):
                    delta = {"tool_calls": [tool_call_body(event, tool_index)]}
                    tool_index += 1
                    out.append(_json_line(_chunk(run.id, run.created, model, delta, None, include_usage)))
                elif isinstance(event, BaseException):
                    out.append(_json_line(completion_error_from(event, model=model).body()))
            yield b"".join(out)
            batch = await anext(batches, None)
        finish = openai_finish_reason(run.finish_reason, tool_index > 0)
        tail = [_json_line(_chunk(run.id, run.created, model, {}, finish, include_usage))]
        if include_usage:
            tail.append(_usage_chunk(run.id, run.created, model, run.usage_body()))
        tail.append(b"data: [DONE]\n\n")
        yield b"".join(tail)
    finally:
        # The client went away (or we are done): stop the call; it settles what was used, once.
        run.cancel()


# --- a turn of a Parley conversation ------------------------------------------------------------


async def _conversation_turn(membership, key, parsed: CompletionRequest, target: str) -> HttpResponse:
    from conversations import services
    from conversations.api import _detached
    from conversations.generation import generation_wait

    if parsed.tools:
        raise CompletionError("Client tools cannot be used with a Parley conversation.", param="tools")
    if parsed.messages[-1].role != "user" or not parsed.last_user_content.strip():
        raise CompletionError("The last message must be a non-empty user message.", param="messages")
    subscriber = hub_module.QueueSubscriber() if parsed.stream else None
    started = await _detached(
        services.turn_start,
        membership=membership,
        api_key=key,
        conversation_id=None if target == "new" else uuid.UUID(target),
        content=parsed.last_user_content,
        model=parsed.model,
        client_id=uuid.uuid4(),
        subscriber=subscriber,
    )
    answer = started.assistant_message
    run_id, created = "chatcmpl-" + answer.id.hex, int(time.time())
    headers = {CONVERSATION_HEADER: str(started.conversation.id)}
    if subscriber is None:
        try:
            async with asyncio.timeout(ANSWER_WAIT_SECONDS):
                answer = await generation_wait(answer.id)
        except TimeoutError:
            raise CompletionError("The answer took too long.", status=504, type="api_error", code="timeout") from None
        if answer.status == "failed" and not answer.content:
            raise CompletionError(answer.error_message or "The model failed.", status=502, type="api_error", code="provider_error")
        usage = _message_usage(answer)
        body = completion_body(run_id, created, parsed.model, answer.content, [], "stop", usage)
        return JsonResponse(body, headers=headers)
    return sse_response(_conversation_chunks(parsed, started, subscriber, run_id, created), headers=headers)


def _message_usage(message) -> dict:
    return {
        "prompt_tokens": message.input_tokens,
        "completion_tokens": message.output_tokens,
        "total_tokens": message.input_tokens + message.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def _conversation_chunks(parsed: CompletionRequest, started, subscriber, run_id: str, created: int):
    model, include_usage = parsed.model, parsed.include_usage
    mid = str(started.assistant_message.id)
    try:
        yield _json_line(_chunk(run_id, created, model, {"role": "assistant", "content": ""}, None, include_usage))
        while True:
            frame = await subscriber.queue.get()
            kind = frame.get("type")
            if kind == "delta" and frame.get("message") == mid:
                yield _json_line(_chunk(run_id, created, model, {"content": frame["text"]}, None, include_usage))
            elif kind == "generation.finished" and frame["message"]["id"] == mid:
                message = frame["message"]
                out = []
                if message.get("error"):
                    error = CompletionError(message["error"]["message"], status=502, type="api_error", code="provider_error")
                    out.append(_json_line(error.body()))
                out.append(_json_line(_chunk(run_id, created, model, {}, "stop", include_usage)))
                if include_usage:
                    usage = message["usage"]
                    body = {
                        "prompt_tokens": usage["input_tokens"],
                        "completion_tokens": usage["output_tokens"],
                        "total_tokens": usage["input_tokens"] + usage["output_tokens"],
                        "prompt_tokens_details": {"cached_tokens": 0},
                    }
                    out.append(_usage_chunk(run_id, created, model, body))
                out.append(b"data: [DONE]\n\n")
                yield b"".join(out)
                return
    finally:
        with contextlib.suppress(Exception):
            await hub_module.default().unfollow(subscriber, started.conversation.id)


# --- the OpenAPI description (added to /api/schema/ by a drf-spectacular post-processing hook) ---

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "example": "invalid_request_error"},
                "code": {"type": "string", "nullable": True, "example": "model_not_found"},
                "param": {"type": "string", "nullable": True},
            },
        }
    },
}
_USAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
    },
}
_TOOL_CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string", "description": "JSON text"}},
        },
    },
}
_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "A Parley model alias (GET /v1/models).", "example": "demo"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"type": "string", "nullable": True},
                    "tool_calls": {"type": "array", "items": _TOOL_CALL_SCHEMA},
                    "tool_call_id": {"type": "string"},
                    "name": {"type": "string"},
                },
            },
        },
        "stream": {"type": "boolean", "default": False},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "tools": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "description": {"type": "string"},
                            "parameters": {"type": "object"},
                        },
                    },
                },
            },
        },
        "tool_choice": {"type": "string", "enum": ["auto", "none", "required"]},
        "metadata": {
            "type": "object",
            "properties": {"parley_conversation": {"type": "string", "description": "`new` or a conversation id"}},
        },
    },
}
_COMPLETION_SCHEMA = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ["assistant"]},
                            "content": {"type": "string", "nullable": True},
                            "tool_calls": {"type": "array", "items": _TOOL_CALL_SCHEMA},
                        },
                    },
                    "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls", "content_filter"]},
                },
            },
        },
        "usage": _USAGE_SCHEMA,
    },
}
_MODEL_SCHEMA = {
    "type": "object",
    "required": ["id", "object", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["model"]},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}


def _errors(*statuses: int) -> dict:
    text = {
        400: "Invalid request (OpenAI error object; `param` names the field).",
        401: "Missing, wrong, revoked or expired API key (`invalid_api_key`).",
        404: "Unknown model, or one your plan lacks (`model_not_found`); or a conversation that is not yours.",
        405: "Wrong method.",
        409: "An answer is already streaming in that conversation (`busy`).",
        429: "Rate limited (`rate_limit_exceeded`) or budget used up (`budget_exceeded`); see Retry-After.",
        502: "The model's provider failed before answering.",
    }
    return {
        str(status): {"description": text[status], "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        for status in statuses
    }


def openapi_paths(result: dict, generator, request, public) -> dict:
    """drf-spectacular post-processing hook: describe the OpenAI-compatible endpoint in /api/schema/."""
    security = [{"apiKey": []}]
    tags = ["openai-compatible"]
    result.setdefault("paths", {})
    result["paths"]["/v1/chat/completions"] = {
        "post": {
            "operationId": "openai_chat_completions",
            "summary": "Chat completion (OpenAI-compatible)",
            "description": (__doc__ or "").strip(),
            "tags": tags,
            "security": security,
            "parameters": [
                {
                    "in": "header",
                    "name": CONVERSATION_HEADER,
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "`new`, or the id of one of your conversations: keep the exchange as a Parley conversation.",
                }
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}},
            "responses": {
                "200": {
                    "description": "The completion; with `stream: true`, `chat.completion.chunk` events ending in `data: [DONE]`.",
                    "content": {
                        "application/json": {"schema": _COMPLETION_SCHEMA},
                        "text/event-stream": {
                            "schema": {"type": "object", "properties": {"data": {"type": "string"}}}
                        },
                    },
                },
                **_errors(400, 401, 404, 405, 409, 429, 502),
            },
        }
    }
    result["paths"]["/v1/models"] = {
        "get": {
            "operationId": "openai_models_list",
            "summary": "Models your organization may use (OpenAI-compatible)",
            "tags": tags,
            "security": security,
            "responses": {
                "200": {
                    "description": "OpenAI's model list.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "object": {"type": "string", "enum": ["list"]},
                                    "data": {"type": "array", "items": _MODEL_SCHEMA},
                                },
                            }
                        }
                    },
                },
                **_errors(401, 404),
            },
        }
    }
    result["paths"]["/v1/models/{model_id}"] = {
        "get": {
            "operationId": "openai_models_retrieve",
            "summary": "One model (OpenAI-compatible)",
            "tags": tags,
            "security": security,
            "parameters": [{"in": "path", "name": "model_id", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "OpenAI's model object.", "content": {"application/json": {"schema": _MODEL_SCHEMA}}},
                **_errors(401, 404),
            },
        }
    }
    return result
