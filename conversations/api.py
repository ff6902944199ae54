"""REST API of conversations: conversations, their messages, sending (JSON or SSE), stop, regenerate, models.

The chat turn is async (it starts a generation task), DRF views are sync. Under ASGI a sync view
runs in a worker thread, and `async_to_sync` runs a coroutine on the server's event loop. The
services run in a fresh context (`_detached`), so the generation task they start belongs to the
server's loop and outlives the request: asgiref ends each request's ThreadSensitiveContext and
refuses database calls from tasks that inherited it.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIRequest
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import api_key_of, membership_of
from accounts.errors import InvalidInput
from accounts.serializers import error_responses
from conversations import frames, services, turns
from conversations import hub as hub_module
from conversations.generation import generation_wait
from conversations.selectors import (
    conversation_get_for_member,
    conversations_page_for_member,
    message_get_for_member,
    messages_for_conversation,
)
from conversations.serializers import (
    ConversationCreateSerializer,
    ConversationSerializer,
    ConversationUpdateSerializer,
    MessageSendSerializer,
    MessageSerializer,
    ModelSerializer,
    RegenerateSerializer,
    SSEEventSerializer,
    TurnSerializer,
)
from conversations.sse import answer_events, sse_response

ANSWER_WAIT_SECONDS = 300.0  # a non-streamed send answers with the message as it is after this long
STOP_WAIT_SECONDS = 10.0

_SSE_DESCRIPTION = (
    "With `stream: true` the answer is `text/event-stream`: one event per websocket frame "
    "(`event: <type>` + `data: <frame as JSON>`): conversation.created (new conversation), message.created, "
    "generation.started, delta (seq 1, 2, 3 …), tool.call, tool.result, generation.finished."
)

_SSE_RESEND = "This client_id was seen before: what exists, then (if the answer still streams) its live events."


async def _detached(fn, /, **kwargs) -> Any:
    """Await a service in a fresh context on the running loop (see the module docstring)."""
    task = asyncio.get_running_loop().create_task(fn(**kwargs), context=contextvars.Context())
    return await asyncio.shield(task)


def _archived_filter(value: str) -> bool | None:
    """`?archived=` as the schema says: false (the default), true or all (None)."""
    choices = {"false": False, "true": True, "all": None}
    if value not in choices:
        raise InvalidInput("`archived` must be true, false or all.", param="archived")
    return choices[value]


def _streaming_possible(request: Request) -> None:
    if not isinstance(request._request, ASGIRequest):
        raise InvalidInput("Streaming needs the ASGI server (Daphne or Uvicorn).")


class ConversationListView(GenericAPIView):
    serializer_class = ConversationSerializer

    @extend_schema(
        summary="List your conversations",
        parameters=[
            OpenApiParameter("archived", str, enum=["false", "true", "all"], description="Default: false."),
            OpenApiParameter("search", str, description="Matches the title or the text of any message."),
        ],
        responses={200: ConversationSerializer(many=True), **error_responses(422)},
    )
    def get(self, request: Request) -> Response:
        membership = membership_of(request)
        archived = request.query_params.get("archived", "false")
        search = request.query_params.get("search", "")[:200]
        parsed = _archived_filter(archived)
        queryset = conversations_page_for_member(membership=membership, archived=bool(parsed), search=search)
        if parsed is None:
            queryset = (
                conversations_page_for_member(membership=membership, archived=False, search=search)
                | conversations_page_for_member(membership=membership, archived=True, search=search)
            ).order_by("-updated_at", "-id")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(ConversationSerializer(page, many=True).data)

    @extend_schema(
        summary="Start a conversation (without a message)",
        request=ConversationCreateSerializer,
        responses={201: ConversationSerializer, **error_responses(403, 413)},
    )
    def post(self, request: Request) -> Response:
        membership = membership_of(request)
        data = _valid(ConversationCreateSerializer, request.data)
        conversation = services.conversation_create(
            membership=membership, title=data["title"], model=data["model"], persona_id=data["persona"]
        )
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailView(APIView):
    @extend_schema(summary="One conversation", responses={200: ConversationSerializer, **error_responses()})
    def get(self, request: Request, conversation_id: uuid.UUID) -> Response:
        conversation = conversation_get_for_member(membership=membership_of(request), conversation_id=conversation_id)
        return Response(ConversationSerializer(conversation).data)

    @extend_schema(
        summary="Rename, archive or unarchive a conversation, or change its model",
        request=ConversationUpdateSerializer,
        responses={200: ConversationSerializer, **error_responses(403, 413)},
    )
    def patch(self, request: Request, conversation_id: uuid.UUID) -> Response:
        membership = membership_of(request)
        conversation_get_for_member(membership=membership, conversation_id=conversation_id)
        data = _valid(ConversationUpdateSerializer, request.data)
        conversation = services.conversation_update(membership=membership, conversation_id=conversation_id, **data)
        return Response(ConversationSerializer(conversation).data)

    @extend_schema(summary="Delete a conversation and its messages", responses={204: None, **error_responses(409)})
    def delete(self, request: Request, conversation_id: uuid.UUID) -> Response:
        services.conversation_delete(membership=membership_of(request), conversation_id=conversation_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _turn_body(started: turns.TurnStarted, answer) -> dict:
    return TurnSerializer(
        {
            "conversation": started.conversation,
            "user_message": started.user_message,
            "assistant_message": answer,
            "created": started.created,
        }
    ).data


async def _start_and_wait(service, kwargs: dict) -> tuple[turns.TurnStarted, Any]:
    started = await _detached(service, **kwargs)
    answer = started.assistant_message
    try:
        async with asyncio.timeout(ANSWER_WAIT_SECONDS):
            answer = await generation_wait(answer.id)
    except TimeoutError:
        pass
    return started, answer


async def _start_following(service, kwargs: dict, subscriber: hub_module.QueueSubscriber):
    started = await _detached(service, subscriber=subscriber, **kwargs)
    first: list[dict] = []
    if not started.created:
        # A resend of a known client_id: what exists, then (if it still streams) a snapshot and live frames.
        if started.user_message is not None:
            first.append(frames.message_created(started.user_message))
        answer = started.assistant_message
        if answer.is_terminal:
            first.append(
                frames.generation_started(message_id=answer.id, conversation_id=answer.conversation_id, model=answer.model)
            )
            first.append(frames.generation_finished(answer))
        else:
            await hub_module.default().follow(subscriber, answer.conversation_id)
    return started, first


def _turn_response(request: Request, service, kwargs: dict, stream: bool) -> Any:
    if not stream:
        started, answer = async_to_sync(_start_and_wait)(service, kwargs)
        code = status.HTTP_201_CREATED if started.created else status.HTTP_200_OK
        return Response(_turn_body(started, answer), status=code)
    _streaming_possible(request)
    subscriber = hub_module.QueueSubscriber()
    started, first = async_to_sync(_start_following)(service, kwargs, subscriber)
    events = answer_events(
        subscriber=subscriber,
        conversation_id=started.conversation.id,
        message_id=started.assistant_message.id,
        first=first,
    )
    return sse_response(events, status=201 if started.created else 200)


class MessageListView(GenericAPIView):
    serializer_class = MessageSerializer

    @extend_schema(
        summary="Messages of a conversation, oldest first",
        responses={200: MessageSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, conversation_id: uuid.UUID) -> Response:
        conversation = conversation_get_for_member(membership=membership_of(request), conversation_id=conversation_id)
        page = self.paginate_queryset(messages_for_conversation(conversation=conversation))
        return self.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(
        summary="Send a message and get the answer",
        description="Answers when the assistant message is finished. " + _SSE_DESCRIPTION,
        request=MessageSendSerializer,
        responses={
            201: OpenApiResponse(TurnSerializer, description="The turn, with the finished answer."),
            200: OpenApiResponse(TurnSerializer, description="This client_id was seen before: what exists."),
            (201, "text/event-stream"): OpenApiResponse(SSEEventSerializer, description=_SSE_DESCRIPTION),
            (200, "text/event-stream"): OpenApiResponse(SSEEventSerializer, description=_SSE_RESEND),
            **error_responses(403, 409, 413, 422, 429),
        },
    )
    def post(self, request: Request, conversation_id: uuid.UUID) -> Any:
        membership = membership_of(request)
        data = _valid(MessageSendSerializer, request.data)
        kwargs = {
            "membership": membership,
            "api_key": api_key_of(request),
            "conversation_id": conversation_id,
            "content": data["content"],
            "model": data["model"] or None,
            "client_id": data["client_id"] or uuid.uuid4(),
        }
        return _turn_response(request, turns.turn_start, kwargs, data["stream"])


class ConversationSendView(APIView):
    @extend_schema(
        summary="Start a conversation with a message and get the answer",
        description="Like sending to a conversation, but creates one. " + _SSE_DESCRIPTION,
        request=MessageSendSerializer,
        responses={
            201: OpenApiResponse(TurnSerializer, description="The turn, with the finished answer."),
            200: OpenApiResponse(TurnSerializer, description="This client_id was seen before: what exists."),
            (201, "text/event-stream"): OpenApiResponse(SSEEventSerializer, description=_SSE_DESCRIPTION),
            (200, "text/event-stream"): OpenApiResponse(SSEEventSerializer, description=_SSE_RESEND),
            **error_responses(403, 413, 422, 429),
        },
    )
    def post(self, request: Request) -> Any:
        membership = membership_of(request)
        data = _valid(MessageSendSerializer, request.data)
        kwargs = {
            "membership": membership,
            "api_key": api_key_of(request),
            "conversation_id": None,
            "content": data["content"],
            "model": data["model"] or None,
            "client_id": data["client_id"] or uuid.uuid4(),
        }
        return _turn_response(request, turns.turn_start, kwargs, data["stream"])


class RegenerateView(APIView):
    @extend_schema(
        summary="Answer the last message again",
        description="The previous answer is kept but superseded. " + _SSE_DESCRIPTION,
        request=RegenerateSerializer,
        responses={
            201: OpenApiResponse(TurnSerializer, description="The new answer (user_message is null)."),
            200: OpenApiResponse(TurnSerializer, description="This client_id was seen before: what exists."),
            (201, "text/event-stream"): OpenApiResponse(SSEEventSerializer, description=_SSE_DESCRIPTION),
            (200, "text/event-stream"): OpenApiResponse(SSEEventSerializer, description=_SSE_RESEND),
            **error_responses(403, 409, 413, 422, 429),
        },
    )
    def post(self, request: Request, conversation_id: uuid.UUID) -> Any:
        membership = membership_of(request)
        conversation_get_for_member(membership=membership, conversation_id=conversation_id)
        data = _valid(RegenerateSerializer, request.data)
        kwargs = {
            "membership": membership,
            "api_key": api_key_of(request),
            "conversation_id": conversation_id,
            "model": data["model"] or None,
            "client_id": data["client_id"] or uuid.uuid4(),
        }
        return _turn_response(request, turns.turn_regenerate, kwargs, data["stream"])


class MessageDetailView(APIView):
    @extend_schema(summary="One message", responses={200: MessageSerializer, **error_responses()})
    def get(self, request: Request, message_id: uuid.UUID) -> Response:
        message = message_get_for_member(membership=membership_of(request), message_id=message_id)
        return Response(MessageSerializer(message).data)


async def _stop_and_wait(membership, message_id: uuid.UUID):
    message = await _detached(turns.generation_stop, membership=membership, message_id=message_id)
    if message.is_terminal:
        return message
    try:
        async with asyncio.timeout(STOP_WAIT_SECONDS):
            return await generation_wait(message.id)
    except TimeoutError:
        return message


class MessageStopView(APIView):
    @extend_schema(
        summary="Stop a streaming answer",
        description="What was generated is kept and billed; the message ends `cancelled`. "
        "Stopping a finished answer changes nothing.",
        request=None,
        responses={200: MessageSerializer, **error_responses()},
    )
    def post(self, request: Request, message_id: uuid.UUID) -> Response:
        membership = membership_of(request)
        message_get_for_member(membership=membership, message_id=message_id)
        message = async_to_sync(_stop_and_wait)(membership, message_id)
        return Response(MessageSerializer(message).data)


def models_for_membership(membership) -> list[dict]:
    """The models this organization's tier allows, the platform has configured and that have a price in
    effect (an unpriced model cannot be used, so it is not offered), with their prices."""
    from billing.selectors import price_for
    from llm.registry import models_all

    tier = membership.organization.tier
    rows = []
    for info in models_all():
        if not info.available or not tier.allows_model(info.alias):
            continue
        price = price_for(info.alias)
        if price is None:
            continue
        rows.append(
            {
                "alias": info.alias,
                "display_name": info.display_name or info.alias,
                "provider": info.provider,
                "context_window": info.context_window,
                "max_output_tokens": min(info.max_output_tokens, tier.max_output_tokens),
                "supports_tools": info.supports_tools,
                "price": {
                    "input_per_million": price.input_unit,
                    "output_per_million": price.output_unit,
                    "cached_input_per_million": price.cached_input_unit,
                    "currency": "USD",
                },
            }
        )
    return rows


class ModelListView(APIView):
    @extend_schema(
        summary="Models your organization may use",
        responses={200: ModelSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request) -> Response:
        return Response(ModelSerializer(models_for_membership(membership_of(request)), many=True).data)
