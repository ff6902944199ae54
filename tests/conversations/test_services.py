"""The turn's transactional core, the context it builds, interrupted answers, conversations and personas."""

import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.errors import InvalidInput, NotFound, PermissionDenied
from billing.models import Reservation, ReservationStatus
from conversations import engine, services, turns
from conversations.errors import Busy, ConversationNotFound
from conversations.generation import message_save_final
from conversations.models import Conversation, Message, Role, Status
from conversations.selectors import conversation_get_for_member, conversations_for_member, messages_for_conversation

pytestmark = pytest.mark.django_db


def _conversation_with_history(membership, n: int, *, words: int = 3) -> Conversation:
    conversation = Conversation.objects.create(
        organization=membership.organization, owner=membership.user, model="demo", message_count=n
    )
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            organization=membership.organization,
            position=i,
            role=Role.USER if i % 2 else Role.ASSISTANT,
            content=" ".join([f"m{i}"] * words),
            token_count=words + 1,
            status=Status.COMPLETE,
        )
        for i in range(1, n + 1)
    )
    return conversation


def _begin(membership, conversation_id, content="hello", **extra):
    return turns._turn_begin(
        membership=membership,
        api_key=None,
        conversation_id=conversation_id,
        content=content,
        model=None,
        client_id=uuid.uuid4(),
        **extra,
    )


def _finish(membership, started, prepared):
    """Settle the turn and save its answer, as the engine does when the call ends."""
    from llm.types import Usage

    usage = Usage(input_tokens=10, output_tokens=3, call_id=f"{prepared.request.request_id}:1", model="demo", provider="demo")
    outcome = engine.Outcome(
        status=Status.COMPLETE, finish_reason="stop", error=None, text="a b c", tool_calls=[], usages=[usage], model="demo"
    )
    generation = SimpleNamespace(message_id=started.assistant_message.id, seq=3, model="demo", _tool_events=[], message=None)
    saved = []

    class Saver(engine.Sink):
        def settled(self, outcome):
            saved.append(message_save_final(generation=generation, outcome=outcome, content="a b c"))

    engine.BilledStream(prepared, Saver())._settle(outcome)
    return saved[0]


def _queries_of_a_turn(membership, conversation) -> int:
    with CaptureQueriesContext(connection) as begin:
        started, prepared = _begin(membership, conversation.id)
    with CaptureQueriesContext(connection) as finish:
        _finish(membership, started, prepared)
    return len(begin.captured_queries) + len(finish.captured_queries)


def test_queries_of_a_turn_do_not_grow_with_the_history(org_a, django_assert_max_num_queries):
    short = _conversation_with_history(org_a.member, 5)
    long = _conversation_with_history(org_a.member, 500)
    _queries_of_a_turn(org_a.member, _conversation_with_history(org_a.member, 1))  # warm caches (prices, tiers)
    with_5 = _queries_of_a_turn(org_a.member, short)
    with django_assert_max_num_queries(with_5):
        _queries_of_a_turn(org_a.member, long)


def test_prompt_uses_stored_counts_recent_messages_and_the_summary(org_a, monkeypatch):
    conversation = _conversation_with_history(org_a.member, 60, words=50)
    conversation.system_prompt = "You are terse."
    conversation.summary = "They talked about m1 to m20."
    conversation.summary_through = 20
    conversation.save()
    # Stored counts are used as they are: never re-tokenized.
    counted: list[str] = []
    real_count = turns.count_text
    monkeypatch.setattr(turns, "count_text", lambda text, model=None: counted.append(text) or real_count(text, model))
    started, prepared = _begin(org_a.member, conversation.id, content="the question")
    assert counted and all(len(text) < 400 for text in counted), "only new text is counted"
    system = prepared.request.messages[0]
    assert system.role == "system" and "You are terse." in system.content and "m1 to m20" in system.content
    contents = [m.content for m in prepared.request.messages[1:]]
    assert contents[-1] == "the question"
    assert not any(c.startswith(("m1 ", "m20 ")) for c in contents), "summarized messages are not sent again"
    assert started.user_message.token_count > 0


def test_prompt_fits_the_context_window(org_a, monkeypatch):
    conversation = _conversation_with_history(org_a.member, 40, words=400)
    real = turns.model_get

    def small_window(alias):
        info = real(alias)
        return info.__class__(**{**info.__dict__, "context_window": 3_000, "max_output_tokens": 500})

    monkeypatch.setattr(turns, "model_get", small_window)
    _, prepared = _begin(org_a.member, conversation.id, content="last")
    assert 1 <= len(prepared.request.messages) < 10
    assert prepared.request.messages[-1].content == "last"


def test_busy_is_decided_in_the_database(org_a):
    started, prepared = _begin(org_a.member, None)
    with pytest.raises(Busy):
        _begin(org_a.member, started.conversation.id, content="again")
    _finish(org_a.member, started, prepared)
    again, _ = _begin(org_a.member, started.conversation.id, content="again")
    assert again.created


def test_a_stale_streaming_answer_does_not_block_the_conversation(org_a):
    started, _ = _begin(org_a.member, None)
    answer = Message.objects.get(id=started.assistant_message.id)
    Message.objects.filter(id=answer.id).update(updated_at=timezone.now() - timedelta(minutes=5))
    # Its process still writes the turn's heartbeat (settling after a database blip): still busy.
    with pytest.raises(Busy):
        _begin(org_a.member, started.conversation.id, content="again")
    Reservation.objects.filter(id=answer.reservation_id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    again, _ = _begin(org_a.member, started.conversation.id, content="again")
    assert again.created
    assert Message.objects.get(id=answer.id).status == Status.INTERRUPTED
    assert Reservation.objects.get(id=answer.reservation_id).status == ReservationStatus.RECOVERED


def test_client_id_is_idempotent_and_private(org_a, org_b):
    client_id = uuid.uuid4()
    first, _ = turns._turn_begin(
        membership=org_a.member, api_key=None, conversation_id=None, content="hi", model=None, client_id=client_id
    )
    again, prepared = turns._turn_begin(
        membership=org_a.member, api_key=None, conversation_id=None, content="hi", model=None, client_id=client_id
    )
    assert not again.created and prepared is None
    assert again.user_message.id == first.user_message.id and again.assistant_message.id == first.assistant_message.id
    assert Message.objects.count() == 2 and Conversation.objects.count() == 1
    with pytest.raises(InvalidInput):
        turns._turn_begin(
            membership=org_a.admin, api_key=None, conversation_id=None, content="hi", model=None, client_id=client_id
        )


def test_refused_turn_leaves_nothing_behind(org_a, tier_factory):
    tier_factory("pro", max_message_chars=5)
    org_a.member.organization.tier.refresh_from_db()
    from billing.errors import MessageTooLong

    with pytest.raises(MessageTooLong):
        _begin(org_a.member, None, content="far too long")
    assert Conversation.objects.count() == 0 and Message.objects.count() == 0


def test_mark_interrupted_command(org_a):
    fresh, _ = _begin(org_a.member, None)
    stale, _ = _begin(org_a.member, None)
    long_ago = timezone.now() - timedelta(minutes=5)
    Message.objects.filter(id=stale.assistant_message.id).update(updated_at=long_ago)
    Reservation.objects.filter(id=stale.assistant_message.reservation_id).update(heartbeat_at=long_ago)
    call_command("conversations_mark_interrupted")  # default: only answers whose process stopped
    assert Message.objects.get(id=stale.assistant_message.id).status == Status.INTERRUPTED
    assert Message.objects.get(id=fresh.assistant_message.id).status == Status.STREAMING
    call_command("conversations_mark_interrupted", "--all")  # start-up of the only process
    fresh_answer = Message.objects.get(id=fresh.assistant_message.id)
    assert fresh_answer.status == Status.INTERRUPTED and fresh_answer.error_code == "interrupted"
    assert fresh_answer.finished_at is not None
    assert Message.objects.get(id=fresh.user_message.id).status == Status.COMPLETE
    assert not Reservation.objects.filter(status=ReservationStatus.OPEN).exists(), "both turns are settled"


def test_selectors_scope_to_the_owner(org_a, org_b):
    mine = _conversation_with_history(org_a.member, 3)
    _conversation_with_history(org_a.admin, 2)
    _conversation_with_history(org_b.member, 2)
    assert [c.id for c in conversations_for_member(membership=org_a.member)] == [mine.id]
    assert conversation_get_for_member(membership=org_a.member, conversation_id=mine.id) == mine
    for other in (org_b.member, org_a.admin):
        with pytest.raises(ConversationNotFound):
            conversation_get_for_member(membership=other, conversation_id=mine.id)
    with pytest.raises(NotFound):
        conversation_get_for_member(membership=org_a.member, conversation_id="not-a-uuid")
    assert [m.position for m in messages_for_conversation(conversation=mine)] == [1, 2, 3]
    assert [m.position for m in messages_for_conversation(conversation=mine, last=2)] == [2, 3]


def test_conversation_update_and_delete(org_a, org_b):
    conversation = services.conversation_create(membership=org_a.member, title="  First  ")
    assert conversation.title == "First" and conversation.model == "demo"
    services.conversation_update(membership=org_a.member, conversation_id=conversation.id, title="Renamed", archived=True)
    conversation.refresh_from_db()
    assert conversation.title == "Renamed" and conversation.archived
    with pytest.raises(NotFound):
        services.conversation_update(membership=org_b.owner, conversation_id=conversation.id, title="x")
    with pytest.raises(NotFound):
        services.conversation_delete(membership=org_b.owner, conversation_id=conversation.id)
    services.conversation_delete(membership=org_a.member, conversation_id=conversation.id)
    assert not Conversation.objects.filter(id=conversation.id).exists()


def test_personas_are_managed_by_admins_and_used_at_start(org_a, org_b):
    with pytest.raises(PermissionDenied):
        services.persona_create(membership=org_a.member, name="Pirate", system_prompt="Talk like a pirate.")
    persona = services.persona_create(membership=org_a.admin, name="Pirate", system_prompt="Talk like a pirate.")
    with pytest.raises(InvalidInput):
        services.persona_create(membership=org_a.owner, name="Pirate", system_prompt="again")
    started, prepared = _begin(org_a.member, None, persona_id=persona.id)
    assert started.conversation.persona_id == persona.id
    assert prepared.request.messages[0].role == "system" and prepared.request.messages[0].content == "Talk like a pirate."
    with pytest.raises(NotFound):
        _begin(org_b.member, None, persona_id=persona.id)
    services.persona_update(membership=org_a.owner, persona_id=persona.id, name="Captain", system_prompt="Arr.")
    with pytest.raises(NotFound):
        services.persona_delete(membership=org_b.owner, persona_id=persona.id)
    services.persona_delete(membership=org_a.admin, persona_id=persona.id)


def test_title_from_text():
    assert services.title_from_text("  short   one ") == "short one"
    long = services.title_from_text("word " * 40)
    assert len(long) <= 80 and long.endswith("…")


def test_a_turn_with_tools_reserves_every_call_of_the_tool_loop(org_a, fake_provider):
    """With tools the answer may make MAX_TOOL_ROUNDS + 1 provider calls: the reservation covers them all."""
    from billing.models import Reservation
    from conversations.engine import MAX_TOOL_ROUNDS

    membership = org_a.member
    tier = membership.organization.tier
    assert tier.has_feature("tools")

    def reserved(conversation_id=None):
        started, prepared = turns._turn_begin(
            membership=membership,
            api_key=None,
            conversation_id=conversation_id,
            content="What is 6*7?",
            model="gpt-5.2-instant",
            client_id=uuid.uuid4(),
        )
        authorization = prepared.authorization
        assert Reservation.objects.get(id=authorization.reservation_id).amount == authorization.reserved_cost
        return started, authorization.reserved_cost

    with_tools_turn, with_tools = reserved()
    assert with_tools_turn.toolset  # the generation gets the tools the reservation was made for
    tier.features = [f for f in tier.features if f != "tools"]
    without_tools_turn, without_tools = reserved()
    assert without_tools_turn.toolset is None
    # Each later call of the loop carries a prompt at least as long as the first: at least N + 1 times one call.
    assert without_tools > 0
    assert with_tools >= (MAX_TOOL_ROUNDS + 1) * without_tools


def test_the_reservation_counts_the_tools_sent_with_the_prompt(org_a):
    """The provider bills the tools' definitions as input: the reservation covers them too."""
    from billing.models import Reservation
    from llm.tokens import count_text

    started, prepared = _begin(org_a.member, None, content="hello")
    assert started.toolset  # the demo model gets the plan's tools
    tools_tokens = count_text(engine._tools_json(started.toolset.specs()), "demo")
    reservation = Reservation.objects.get(id=prepared.authorization.reservation_id)
    assert reservation.prompt_tokens >= started.user_message.token_count + tools_tokens
