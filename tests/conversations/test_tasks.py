"""Celery tasks of conversations: titles, summaries, the interrupted sweep. They fail closed."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Membership
from conversations import tasks
from conversations.models import Conversation, Message, Role, Status

pytestmark = pytest.mark.django_db


def _conversation(membership, contents: list[str], *, model: str = "demo") -> Conversation:
    conversation = Conversation.objects.create(
        organization=membership.organization, owner=membership.user, model=model, message_count=len(contents)
    )
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            organization=membership.organization,
            position=i,
            role=Role.USER if i % 2 else Role.ASSISTANT,
            content=content,
            token_count=len(content.split()) + 1,
            status=Status.COMPLETE,
        )
        for i, content in enumerate(contents, start=1)
    )
    return conversation


def test_demo_conversations_are_titled_by_truncating_the_first_message(org_a):
    conversation = _conversation(org_a.member, ["How do I bake sourdough bread at home?", "Like this."])
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "How do I bake sourdough bread at home?"


def test_a_title_is_never_overwritten(org_a):
    conversation = _conversation(org_a.member, ["first", "answer"])
    Conversation.objects.filter(id=conversation.id).update(title="Chosen")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "Chosen"


def test_tasks_fail_closed(org_a):
    # Unknown and malformed ids, and a conversation whose owner left the organization: nothing happens.
    tasks.conversation_title(str(uuid.uuid4()))
    tasks.conversation_title("not-a-uuid")
    tasks.conversation_summarize(str(uuid.uuid4()))
    conversation = _conversation(org_a.member, ["hello there", "hi"])
    Membership.objects.filter(pk=org_a.member.pk).delete()
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == ""


# The model call logs through database_sync_to_async: it needs real commits, not the test's transaction.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_long_conversations_are_summarized_keeping_the_recent_turns(org_a):
    contents = [f"message number {i} about topic {i}" for i in range(1, 51)]
    conversation = _conversation(org_a.member, contents)
    tasks.conversation_summarize(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.summary
    assert conversation.summary_through == 50 - tasks.KEEP_RECENT_MESSAGES
    assert conversation.summary_token_count > 0
    # Running it again with nothing new to fold in changes nothing.
    before = conversation.summary
    tasks.conversation_summarize(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.summary == before


def test_short_conversations_are_not_summarized(org_a):
    conversation = _conversation(org_a.member, ["a", "b", "c"])
    tasks.conversation_summarize(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.summary == "" and conversation.summary_through == 0


def test_interrupted_sweep_ends_only_stale_answers(org_a):
    conversation = _conversation(org_a.member, ["q"])
    live = Message.objects.create(
        conversation=conversation, organization=org_a.organization, position=2, role=Role.ASSISTANT, status=Status.STREAMING
    )
    other = _conversation(org_a.member, ["q"])
    dead = Message.objects.create(
        conversation=other, organization=org_a.organization, position=2, role=Role.ASSISTANT, status=Status.STREAMING
    )
    Message.objects.filter(id=dead.id).update(updated_at=timezone.now() - timedelta(minutes=2))
    assert tasks.messages_interrupted_sweep() == 1
    live.refresh_from_db()
    dead.refresh_from_db()
    assert live.status == Status.STREAMING and dead.status == Status.INTERRUPTED


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_real_model_titles_its_conversation(org_a, fake_provider):
    from tests.fakeprovider import reply

    fake_provider.openai.script([reply('"Sourdough', ' at home"', usage=(40, 4))])
    conversation = _conversation(org_a.member, ["How do I bake sourdough bread at home?", "Like this."], model="gpt-5.2-instant")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "Sourdough at home"
    assert "sourdough" in fake_provider.openai.last_request.body["messages"][-1]["content"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_failing_model_falls_back_to_truncation(org_a, fake_provider):
    from tests.fakeprovider import auth_failed

    for vendor in (fake_provider.openai, fake_provider.anthropic, fake_provider.gemini):  # fallbacks fail too
        vendor.default = auth_failed()
    conversation = _conversation(org_a.member, ["What is the capital of France?", "Paris."], model="gpt-5.2-instant")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "What is the capital of France?"
