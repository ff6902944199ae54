"""What a conversation needs after an answer: a title when it has none, a summary when it grew long.

Decided when the turn starts (it already holds the conversation, so no query), dispatched to
Celery after the answer's commit. The tasks are found by name at run time, so this module (and the
turn code that calls it) does not import conversations.tasks, which imports the turn code.
"""

from __future__ import annotations

from uuid import UUID

from celery import current_app
from django.db import transaction

from conversations.models import Conversation

SUMMARY_AFTER_MESSAGES = 40  # unsummarized messages before older turns are summarized

TASKS = {
    "title": "conversations.tasks.conversation_title",
    "summary": "conversations.tasks.conversation_summarize",
}


def conversation_followups(conversation: Conversation) -> tuple[str, ...]:
    needs = []
    if not conversation.title:
        needs.append("title")
    if conversation.message_count - conversation.summary_through > SUMMARY_AFTER_MESSAGES:
        needs.append("summary")
    return tuple(needs)


def followups_dispatch(*, conversation_id: UUID, needs: tuple[str, ...] | None = None) -> None:
    """Queue the follow-up tasks after commit. `needs` as decided at the start of the turn; without
    it, read from the database."""
    if needs is None:
        conversation = Conversation.objects.filter(id=conversation_id).only("title", "message_count", "summary_through")
        needs = conversation_followups(conversation[0]) if conversation else ()
    for need in needs:
        name = TASKS[need]
        transaction.on_commit(lambda name=name: current_app.tasks[name].delay(str(conversation_id)))
