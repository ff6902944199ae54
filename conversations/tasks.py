"""Celery entry points of conversations: titling, summarizing, ending orphaned answers.

Tasks receive ids and fail closed: a conversation whose organization (or owner's membership) is
gone is left alone. Model calls made here go through the turn engine (conversations.engine.complete_sync), like a turn.
"""

from __future__ import annotations

import logging
from uuid import UUID

from celery import shared_task
from django.db import transaction

from accounts.models import Membership
from conversations import engine, recovery
from conversations.models import Conversation, Message, Role
from conversations.services import title_from_text
from conversations.turns import STALE_STREAMING_SECONDS, messages_mark_interrupted
from llm.registry import model_get
from llm.tokens import count_text
from llm.types import ChatRequest
from llm.types import Message as LLMMessage

logger = logging.getLogger(__name__)

KEEP_RECENT_MESSAGES = 10  # the most recent turns always stay verbatim
SUMMARY_SOURCE_MESSAGES = 200  # at most this many older messages per summarizing run
TITLE_PROMPT = (
    "Write a short title (at most six words) for a conversation that starts with the user's message "
    "below. Answer with the title only, no quotes."
)
SUMMARY_PROMPT = (
    "Summarize the conversation below for yourself, so you can continue it later: keep names, numbers, "
    "decisions and open questions. Answer with the summary only."
)


def _conversation(conversation_id: str) -> tuple[Conversation, Membership] | None:
    conversation = (
        Conversation.objects.select_related("organization__tier").filter(id=conversation_id).first()
        if _is_uuid(conversation_id)
        else None
    )
    if conversation is None or conversation.organization_id is None:
        logger.info("conversation %s is gone; nothing to do", conversation_id)
        return None
    membership = (
        Membership.objects.select_related("organization__tier", "user")
        .filter(organization_id=conversation.organization_id, user_id=conversation.owner_id)
        .first()
    )
    if membership is None:
        logger.info("the owner of conversation %s left its organization; nothing to do", conversation_id)
        return None
    return conversation, membership


def _is_uuid(value) -> bool:
    try:
        UUID(str(value))
    except ValueError:
        return False
    return True


def _complete(*, membership: Membership, model: str, messages: list[LLMMessage], request_id: str, max_output_tokens: int) -> str:
    """One billed call through the turn engine (titles and summaries); raises when it did not complete."""
    outcome = engine.complete_sync(
        caller=engine.Caller(membership=membership),
        request=ChatRequest(model=model, messages=tuple(messages), request_id=request_id, max_output_tokens=max_output_tokens),
    )
    if outcome.error is not None:
        raise outcome.error
    return outcome.text.strip()


@shared_task(ignore_result=True)
def conversation_title(conversation_id: str) -> None:
    """Title a new conversation from its first message (the model's title, or the text truncated)."""
    found = _conversation(conversation_id)
    if found is None:
        return
    conversation, membership = found
    if conversation.title:
        return
    first = (
        Message.objects.filter(conversation=conversation, role=Role.USER).order_by("position").only("content").first()
    )
    if first is None:
        return
    title = ""
    # The demo model answers with canned text, not a title: its conversations are titled by truncation.
    if conversation.model != "demo":
        try:
            title = _complete(
                membership=membership,
                model=conversation.model,
                messages=[LLMMessage(role="system", content=TITLE_PROMPT), LLMMessage(role="user", content=first.content[:2000])],
                request_id=f"title-{conversation.id}",
                max_output_tokens=24,
            )
        except Exception:
            logger.warning("titling %s with %s failed; truncating", conversation.id, conversation.model, exc_info=True)
        title = " ".join(title.strip().strip("\"'“”").split())[:80]
    title = title or title_from_text(first.content)
    Conversation.objects.filter(id=conversation.id, title="").update(title=title)


@shared_task(ignore_result=True)
def conversation_summarize(conversation_id: str) -> None:
    """Fold the older turns of a long conversation into its stored summary.

    The system prompt and the KEEP_RECENT_MESSAGES most recent messages stay verbatim; the summary
    covers everything up to `summary_through` and is sent in place of those messages.
    """
    found = _conversation(conversation_id)
    if found is None:
        return
    conversation, membership = found
    recent = list(
        Message.objects.filter(conversation=conversation, superseded=False)
        .order_by("-position")
        .values_list("position", flat=True)[:KEEP_RECENT_MESSAGES]
    )
    if len(recent) < KEEP_RECENT_MESSAGES:
        return
    keep_from = min(recent)
    older = list(
        Message.objects.filter(
            conversation=conversation,
            superseded=False,
            position__gt=conversation.summary_through,
            position__lt=keep_from,
        )
        .exclude(content="")
        .order_by("position")
        .values_list("position", "role", "content")[:SUMMARY_SOURCE_MESSAGES]
    )
    if not older:
        return
    transcript = "\n\n".join(f"{role}: {content}" for _, role, content in older)
    if conversation.summary:
        transcript = f"Summary so far:\n{conversation.summary}\n\n{transcript}"
    model = conversation.model
    try:
        window = model_get(model).context_window
    except Exception:
        model, window = "demo", 8_000
    # Roughly 3 characters per token, leaving room for the answer.
    transcript = transcript[-max(2_000, (window - 1_500) * 3) :]
    try:
        summary = _complete(
            membership=membership,
            model=model,
            messages=[LLMMessage(role="system", content=SUMMARY_PROMPT), LLMMessage(role="user", content=transcript)],
            request_id=f"summary-{conversation.id}-{older[-1][0]}",
            max_output_tokens=600,
        )
    except Exception:
        logger.warning("summarizing %s failed", conversation.id, exc_info=True)
        return
    if not summary:
        return
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().filter(id=conversation.id).first()
        if locked is None or locked.summary_through > older[-1][0]:
            return
        locked.summary = summary
        locked.summary_through = older[-1][0]
        locked.summary_token_count = count_text(summary, model)
        locked.save(update_fields=["summary", "summary_through", "summary_token_count"])


@shared_task(ignore_result=True)
def messages_interrupted_sweep() -> int:
    """End answers whose process died (not saved for STALE_STREAMING_SECONDS), each billed from its record."""
    return messages_mark_interrupted(older_than_seconds=STALE_STREAMING_SECONDS)


@shared_task(name="conversations.turns_recover", ignore_result=True)
def turns_recover() -> int:
    """Periodic (15 s): settle the turns of dead processes from their usage records, end their answers."""
    recovered = recovery.turns_recover()
    messages_mark_interrupted(older_than_seconds=STALE_STREAMING_SECONDS)
    return recovered
