"""Send, edit and regenerate: the chat turn of the websocket and the REST API, over the one engine.

`turn_start`, `turn_regenerate` and `turn_edit` share one transactional core (`_turn_begin`): lock the
conversation, find an earlier send with the same client_id (idempotency), refuse when an answer is
already streaming (`busy`, decided in the database, so two processes cannot both start one), save
the user message, build the prompt from stored token counts, ask the engine to prepare the call
(plan rules, rate limits, budget reservation: `engine.turn_prepare`), and save the `streaming`
assistant message. Any refusal rolls the whole turn back. Then the answer runs as the engine's
billed stream, with a Generation (conversations.generation) turning its events into frames.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.errors import InvalidInput
from accounts.models import Membership
from config.errors import ParleyError
from conversations import engine, frames, recovery
from conversations import hub as hub_module
from conversations.db import db_async
from conversations.errors import Busy, ConversationNotFound, MessageNotFound
from conversations.followups import conversation_followups
from conversations.generation import Generation, generation_wait
from conversations.models import DEFAULT_MODEL, Conversation, Message, Role, Status
from conversations.selectors import message_get_for_member, persona_get_for_member
from llm.errors import ModelUnavailable
from llm.registry import model_get
from llm.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, count_text, fit_messages
from llm.tools import ToolSet, toolset_for_tier
from llm.types import ChatRequest
from llm.types import Message as LLMMessage

logger = logging.getLogger(__name__)

__all__ = [
    "TurnStarted",
    "turn_start",
    "turn_regenerate",
    "turn_edit",
    "generation_stop",
    "generation_wait",
    "messages_mark_interrupted",
]

MAX_CONTEXT_MESSAGES = 200  # the most recent messages ever loaded to build a prompt
STALE_STREAMING_SECONDS = 30  # a streaming answer not saved for this long has lost its process


class ModelNotAvailable(ParleyError):
    """This model is not available."""

    code = "model_not_allowed"


@dataclass(frozen=True)
class TurnStarted:
    conversation: Conversation
    user_message: Message | None  # None for a regeneration
    assistant_message: Message
    created: bool  # False when the client_id was seen before: nothing new was created
    conversation_created: bool = False
    toolset: ToolSet | None = field(default=None, repr=False, compare=False)  # the tools the answer may call


def _tools_for(membership: Membership, model: str):
    tier = membership.organization.tier
    if tier.has_feature("tools") or model == DEFAULT_MODEL:
        return toolset_for_tier(tier.slug)
    return None


def model_info_for(alias: str):
    try:
        return model_get(alias)
    except ModelUnavailable as exc:
        raise ModelNotAvailable(f"The model “{alias}” is not available.") from exc


def _system_text(conversation: Conversation) -> str:
    parts = [conversation.system_prompt.strip()] if conversation.system_prompt.strip() else []
    if conversation.summary:
        parts.append("Summary of the earlier part of this conversation:\n" + conversation.summary)
    return "\n\n".join(parts)


def _prompt(
    conversation: Conversation, *, model_info, max_output_tokens: int, only: Message | None = None
) -> tuple[tuple[LLMMessage, ...], int]:
    """The prompt within the model's context window, from the stored token counts.

    Loads at most MAX_CONTEXT_MESSAGES recent messages (older ones are summarized), never the
    whole history, and never re-tokenizes stored messages.
    """
    if only is not None:
        rows = [(only.role, only.content, only.token_count)]
    else:
        rows = list(
            Message.objects.filter(
                conversation=conversation,
                superseded=False,
                position__gt=conversation.summary_through,
            )
            .exclude(status__in=(Status.STREAMING, Status.PENDING))
            .order_by("-position")
            .values_list("role", "content", "token_count")[:MAX_CONTEXT_MESSAGES]
        )
        rows.reverse()
    history = [LLMMessage(role=role, content=content) for role, content, _ in rows if content]
    counts = [count for _, content, count in rows if content]
    system_text = _system_text(conversation)
    system = LLMMessage(role="system", content=system_text) if system_text else None
    kept = list(
        fit_messages(system, history, counts, context_window=model_info.context_window, max_output_tokens=max_output_tokens)
    )
    kept_history = [m for m in kept if m.role != "system"]
    prompt_tokens = sum(counts[len(counts) - len(kept_history) :]) if kept_history else 0
    if system is not None:
        prompt_tokens += count_text(system_text, model_info.alias)
    # the chat formatting the vendor bills too: per message, and the reply's priming (llm.tokens)
    prompt_tokens += MESSAGE_OVERHEAD * len(kept) + REPLY_PRIMING
    return tuple(kept), prompt_tokens


def _existing_turn(membership: Membership, role: str, client_id: UUID) -> TurnStarted | None:
    """An earlier send with this client_id (the resend of a lost acknowledgement)."""
    message = (
        Message.objects.select_related("conversation")
        .filter(organization_id=membership.organization_id, role=role, client_id=client_id)
        .first()
    )
    if message is None:
        return None
    if message.conversation.owner_id != membership.user_id:
        raise InvalidInput("This client_id was already used.")
    if role == Role.ASSISTANT:
        answer, user_message = message, None
    else:
        user_message = message
        answer = (
            Message.objects.filter(conversation_id=message.conversation_id, role=Role.ASSISTANT, position__gt=message.position)
            .order_by("position")
            .first()
        )
        if answer is None:
            raise InvalidInput("This client_id was already used.")
    return TurnStarted(conversation=message.conversation, user_message=user_message, assistant_message=answer, created=False)


def _turn_begin(
    *,
    membership: Membership,
    api_key,
    conversation_id: UUID | None,
    content: str | None,
    model: str | None,
    client_id: UUID,
    persona_id: UUID | None = None,
    edit_of: UUID | None = None,
    regenerate: bool = False,
) -> tuple[TurnStarted, engine.Prepared | None]:
    role = Role.ASSISTANT if regenerate else Role.USER
    existing = _existing_turn(membership, role, client_id)
    if existing is not None:
        return existing, None
    if not regenerate and (not isinstance(content, str) or not content.strip()):
        raise InvalidInput("The message is empty.")
    if regenerate and conversation_id is None:
        raise InvalidInput("Which conversation?")
    try:
        with transaction.atomic():
            return _turn_begin_locked(
                membership=membership,
                api_key=api_key,
                conversation_id=conversation_id,
                content=content,
                model=model,
                client_id=client_id,
                persona_id=persona_id,
                edit_of=edit_of,
                regenerate=regenerate,
            )
    except IntegrityError:
        # The same client_id raced in from another socket: answer with what the winner created.
        existing = _existing_turn(membership, role, client_id)
        if existing is None:
            raise
        return existing, None


def _turn_begin_locked(
    *,
    membership: Membership,
    api_key,
    conversation_id: UUID | None,
    content: str | None,
    model: str | None,
    client_id: UUID,
    persona_id: UUID | None,
    edit_of: UUID | None,
    regenerate: bool,
) -> tuple[TurnStarted, engine.Prepared | None]:
    now = timezone.now()
    conversation_created = False
    if conversation_id is None:
        persona = persona_get_for_member(membership=membership, persona_id=persona_id) if persona_id else None
        conversation = Conversation.objects.create(
            organization_id=membership.organization_id,
            owner_id=membership.user_id,
            model=model or DEFAULT_MODEL,
            persona=persona,
            system_prompt=persona.system_prompt if persona else "",
            created_at=now,
            updated_at=now,
            message_count=2,  # the user message and the answer, saved below in this transaction
        )
        conversation_created = True
    else:
        try:
            conversation = Conversation.objects.for_member(membership).select_for_update().get(id=conversation_id)
        except Conversation.DoesNotExist:
            raise ConversationNotFound() from None
        streaming = (
            Message.objects.filter(conversation=conversation, role=Role.ASSISTANT, status=Status.STREAMING)
            .only("id", "updated_at")
            .first()
        )
        if streaming is not None:
            if streaming.updated_at >= now - timedelta(seconds=STALE_STREAMING_SECONDS):
                raise Busy()
            # Not saved for a long time: its process died. Bill and end it, then go on (unless its
            # process still holds the turn: it is settling after a database blip).
            if not _mark_interrupted(Message.objects.filter(id=streaming.id)):
                raise Busy()
        if model and model != conversation.model:
            conversation.model = model
    alias = model or conversation.model
    model_info = model_info_for(alias)
    tier = membership.organization.tier
    fit_output = min(tier.max_output_tokens, model_info.max_output_tokens)

    position = 0 if conversation_created else conversation.message_count
    user_message = None
    parent = None
    if edit_of is not None:
        try:
            old = Message.objects.get(id=edit_of, conversation=conversation, role=Role.USER, superseded=False)
        except Message.DoesNotExist:
            raise MessageNotFound() from None
        later = Message.objects.filter(conversation=conversation, superseded=False, position__gt=old.position)
        if later.filter(role=Role.USER).exists():
            raise InvalidInput("Only the last message can be edited.")
        later.update(superseded=True)
        Message.objects.filter(id=old.id).update(superseded=True)
        parent = old
    if regenerate:
        last = Message.objects.filter(conversation=conversation, superseded=False).order_by("-position").first()
        if last is None:
            raise InvalidInput("There is nothing to regenerate.")
        if last.role == Role.ASSISTANT:
            Message.objects.filter(id=last.id).update(superseded=True)
            parent = last
    else:
        position += 1
        user_message = Message.objects.create(
            conversation=conversation,
            organization_id=membership.organization_id,
            position=position,
            role=Role.USER,
            content=content,
            status=Status.COMPLETE,
            token_count=count_text(content, alias),
            client_id=client_id,
            parent=parent,
            created_at=now,
            updated_at=now,
        )

    # A new conversation holds only the message just saved: no need to read it back.
    messages, prompt_tokens = _prompt(
        conversation,
        model_info=model_info,
        max_output_tokens=fit_output,
        only=user_message if conversation_created else None,
    )
    position += 1
    conversation.message_count = position
    conversation.updated_at = now
    if not conversation_created:  # a new one was created with its final count
        conversation.save(update_fields=["message_count", "updated_at", "model"])
    assistant_id = uuid.uuid4()
    toolset = _tools_for(membership, alias)
    # Last: billing locks the organization's budget counters until this transaction commits.
    prepared = engine.turn_prepare(
        caller=engine.Caller(membership=membership, api_key=api_key),
        request=ChatRequest(model=alias, messages=messages, request_id=str(assistant_id)),
        toolset=toolset,
        max_tool_rounds=engine.MAX_TOOL_ROUNDS,
        prompt_tokens=prompt_tokens,
        conversation_id=conversation.id,
        message_id=assistant_id,
    )
    assistant = Message.objects.create(
        id=assistant_id,
        conversation=conversation,
        organization_id=membership.organization_id,
        position=position,
        role=Role.ASSISTANT,
        status=Status.STREAMING,
        model=alias,
        client_id=client_id if regenerate else None,
        parent=parent if regenerate else None,
        reservation_id=prepared.authorization.reservation_id,
        created_at=now,
        updated_at=now,
    )
    started = TurnStarted(
        conversation=conversation,
        user_message=user_message,
        assistant_message=assistant,
        created=True,
        conversation_created=conversation_created,
        toolset=toolset,
    )
    return started, prepared


def _opening_frames(started: TurnStarted) -> list[dict]:
    conversation, assistant = started.conversation, started.assistant_message
    opening = []
    if started.conversation_created:
        opening.append(frames.conversation_created(conversation))
    if started.user_message is not None:
        opening.append(frames.message_created(started.user_message))
    opening.append(frames.generation_started(message_id=assistant.id, conversation_id=conversation.id, model=assistant.model))
    return opening


async def _begin_and_start(*, membership, api_key, subscriber, hub: hub_module.Hub | None, **kwargs) -> TurnStarted:
    started, prepared = await db_async(_turn_begin)(membership=membership, api_key=api_key, **kwargs)
    hub = hub or hub_module.default()
    if started.created:
        assistant = started.assistant_message
        generation = Generation(
            conversation_id=started.conversation.id,
            message_id=assistant.id,
            prepared=prepared,
            opening_frames=_opening_frames(started),
            message=assistant,
            followups=conversation_followups(started.conversation),
            hub=hub,
        )
        if subscriber is not None:
            hub.follow_now(subscriber, started.conversation.id)
        generation.start()
    return started


async def turn_start(
    *,
    membership: Membership,
    api_key=None,
    conversation_id: UUID | None,
    content: str,
    model: str | None,
    client_id: UUID,
    persona_id: UUID | None = None,
    subscriber: hub_module.Subscriber | None = None,
    hub: hub_module.Hub | None = None,
) -> TurnStarted:
    """Send a user message and start the assistant's answer. Idempotent on `client_id`.

    With `subscriber`, it follows the conversation before the generation publishes anything
    (so it gets conversation.created, message.created, generation.started and every delta).
    """
    return await _begin_and_start(
        membership=membership,
        api_key=api_key,
        subscriber=subscriber,
        hub=hub,
        conversation_id=conversation_id,
        content=content,
        model=model,
        client_id=client_id,
        persona_id=persona_id,
    )


async def turn_regenerate(
    *,
    membership: Membership,
    api_key=None,
    conversation_id: UUID,
    client_id: UUID,
    model: str | None = None,
    subscriber: hub_module.Subscriber | None = None,
    hub: hub_module.Hub | None = None,
) -> TurnStarted:
    """Answer the last user message again; the previous answer is kept but superseded."""
    return await _begin_and_start(
        membership=membership,
        api_key=api_key,
        subscriber=subscriber,
        hub=hub,
        conversation_id=conversation_id,
        content=None,
        model=model,
        client_id=client_id,
        regenerate=True,
    )


async def turn_edit(
    *,
    membership: Membership,
    api_key=None,
    message_id: UUID,
    content: str,
    client_id: UUID,
    subscriber: hub_module.Subscriber | None = None,
    hub: hub_module.Hub | None = None,
) -> TurnStarted:
    """Edit the last user message and answer it again (the old message and answer are superseded)."""
    message = await db_async(message_get_for_member)(membership=membership, message_id=message_id)
    if message.role != Role.USER:
        raise InvalidInput("Only your own messages can be edited.")
    return await _begin_and_start(
        membership=membership,
        api_key=api_key,
        subscriber=subscriber,
        hub=hub,
        conversation_id=message.conversation_id,
        content=content,
        model=None,
        client_id=client_id,
        edit_of=message.id,
    )


async def generation_stop(*, membership: Membership, message_id: UUID, hub: hub_module.Hub | None = None) -> Message:
    """Stop an answer (here, or in the process that runs it). Stopping a finished answer does nothing."""
    message = await db_async(message_get_for_member)(membership=membership, message_id=message_id)
    if message.role != Role.ASSISTANT:
        raise MessageNotFound()
    if message.status == Status.STREAMING:
        await (hub or hub_module.default()).stop(conversation_id=message.conversation_id, message_id=message.id)
    return message


# --- answers whose process died ------------------------------------------------------------


def _mark_interrupted(queryset, *, stale_only: bool = True) -> int:
    """End answers whose process died, each billed first from its turn's usage record (conversations.recovery)."""
    ended = 0
    for message_id, reservation_id in queryset.filter(status=Status.STREAMING).values_list("id", "reservation_id"):
        if recovery.answer_end_lost(message_id=message_id, reservation_id=reservation_id, stale_only=stale_only):
            ended += 1
    return ended


def messages_mark_interrupted(*, older_than_seconds: float | None = None) -> int:
    """End answers left `streaming` by a process that died.

    With `older_than_seconds`, only answers whose partial text was not saved for that long (a
    live generation saves at least every HEARTBEAT_INTERVAL), so live answers of other processes
    are safe; without it, every streaming answer (only when no other process runs).
    """
    queryset = Message.objects.filter(status=Status.STREAMING)
    if older_than_seconds is not None:
        queryset = queryset.filter(updated_at__lt=timezone.now() - timedelta(seconds=older_than_seconds))
    return _mark_interrupted(queryset, stale_only=older_than_seconds is not None)


