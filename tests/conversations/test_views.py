"""The chat pages: list, search, archive, delete, the chat page's history, personas, tenancy."""

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, Message, Persona, Role, Status

pytestmark = pytest.mark.django_db

XSS = '<img src=x onerror="window.__xss=1"> [click](javascript:alert(1)) <script>window.__xss=2</script>'


def make_conversation(membership, title="", *, messages=(), archived=False, age_minutes=0, model="demo"):
    when = timezone.now() - timedelta(minutes=age_minutes)
    conversation = Conversation.objects.create(
        organization=membership.organization,
        owner=membership.user,
        title=title,
        model=model,
        archived=archived,
        created_at=when,
        updated_at=when,
    )
    for position, (role, content, *rest) in enumerate(messages, start=1):
        status = rest[0] if rest else Status.COMPLETE
        Message.objects.create(
            conversation=conversation,
            organization=membership.organization,
            position=position,
            role=role,
            content=content,
            status=status,
            model=model if role == Role.ASSISTANT else "",
            input_tokens=12 if role == Role.ASSISTANT else 0,
            output_tokens=34 if role == Role.ASSISTANT else 0,
            cost=Decimal("0.00012300") if role == Role.ASSISTANT else Decimal("0"),
        )
    conversation.message_count = len(messages)
    conversation.save(update_fields=["message_count"])
    return conversation


@pytest.fixture
def as_member(client):
    def login(membership):
        client.force_login(membership.user)
        return client

    return login


# --- access --------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login(client, org_a):
    conversation = make_conversation(org_a.member, "Mine")
    for url in [
        reverse("conversations:list"),
        reverse("conversations:new"),
        reverse("conversations:detail", args=[conversation.id]),
        reverse("conversations:personas"),
    ]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/"), url


def test_another_tenants_conversation_is_404(as_member, org_a, org_b, assert_foreign_404):
    conversation = make_conversation(org_a.member, "Secret plans", messages=[(Role.USER, "hi"), (Role.ASSISTANT, "yo")])
    answer = conversation.messages.get(role=Role.ASSISTANT)
    client = as_member(org_b.owner)
    assert_foreign_404(client.get(reverse("conversations:detail", args=[conversation.id])))
    assert_foreign_404(client.get(reverse("conversations:delete", args=[conversation.id])))
    assert_foreign_404(client.post(reverse("conversations:delete", args=[conversation.id])))
    assert_foreign_404(client.post(reverse("conversations:archive", args=[conversation.id]), {"archived": "1"}))
    assert_foreign_404(client.post(reverse("conversations:rename", args=[conversation.id]), {"title": "x"}))
    assert_foreign_404(client.get(reverse("conversations:message", args=[conversation.id, answer.id])))
    assert_foreign_404(client.get(reverse("conversations:detail", args=[uuid.uuid4()])))
    assert Conversation.objects.filter(id=conversation.id, archived=False, title="Secret plans").exists()
    assert "Secret plans" not in client.get(reverse("conversations:list")).content.decode()


def test_conversations_are_personal_within_the_organization(as_member, org_a, assert_foreign_404):
    """Even the organization's owner does not read a member's conversations."""
    conversation = make_conversation(org_a.member, "Member's diary")
    client = as_member(org_a.owner)
    assert_foreign_404(client.get(reverse("conversations:detail", args=[conversation.id])))
    assert "Member&#x27;s diary" not in client.get(reverse("conversations:list")).content.decode()


def test_message_endpoint_checks_the_conversation(as_member, org_a, assert_foreign_404):
    one = make_conversation(org_a.member, "One", messages=[(Role.USER, "q"), (Role.ASSISTANT, "**a**")])
    two = make_conversation(org_a.member, "Two")
    answer = one.messages.get(role=Role.ASSISTANT)
    client = as_member(org_a.member)
    assert_foreign_404(client.get(reverse("conversations:message", args=[two.id, answer.id])))
    data = client.get(reverse("conversations:message", args=[one.id, answer.id])).json()
    assert data["id"] == str(answer.id)
    assert data["status"] == "complete"
    assert data["html"] == "<p><strong>a</strong></p>\n"
    assert data["usage"] == {"input_tokens": 12, "output_tokens": 34, "cost": "0.00012300"}
    assert data["conversation_title"] == "One"


# --- the list ------------------------------------------------------------------------------------


def test_list_shows_own_conversations_newest_first(as_member, org_a):
    make_conversation(org_a.member, "Older talk", age_minutes=30)
    make_conversation(org_a.member, "Newer talk", age_minutes=1)
    make_conversation(org_a.member, "Put away", archived=True)
    make_conversation(org_a.admin, "Someone else's")
    page = as_member(org_a.member).get(reverse("conversations:list")).content.decode()
    assert page.index("Newer talk") < page.index("Older talk")
    assert "Put away" not in page
    assert "Someone else" not in page
    assert reverse("conversations:new") in page


def test_search_matches_title_and_message_content(as_member, org_a):
    make_conversation(org_a.member, "Holiday in Lisbon", messages=[(Role.USER, "where to eat")])
    make_conversation(org_a.member, "Taxes", messages=[(Role.USER, "deduct my LISBON flat?")])
    make_conversation(org_a.member, "Recipes", messages=[(Role.USER, "pasta")])
    make_conversation(org_a.admin, "Lisbon too", messages=[(Role.USER, "lisbon")])
    page = as_member(org_a.member).get(reverse("conversations:list"), {"q": "lisbon"}).content.decode()
    assert "Holiday in Lisbon" in page
    assert "Taxes" in page
    assert "Recipes" not in page
    assert "Lisbon too" not in page


def test_archive_and_unarchive(as_member, org_a):
    conversation = make_conversation(org_a.member, "Keep for later")
    client = as_member(org_a.member)
    response = client.post(reverse("conversations:archive", args=[conversation.id]), {"archived": "1"})
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.archived
    assert "Keep for later" not in client.get(reverse("conversations:list")).content.decode()
    assert "Keep for later" in client.get(reverse("conversations:list"), {"archived": "1"}).content.decode()
    client.post(reverse("conversations:archive", args=[conversation.id]), {"archived": "0"})
    conversation.refresh_from_db()
    assert not conversation.archived


def test_archive_needs_post_and_csrf(org_a, client):
    from django.test import Client

    conversation = make_conversation(org_a.member, "Guarded")
    client.force_login(org_a.member.user)
    assert client.get(reverse("conversations:archive", args=[conversation.id])).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(org_a.member.user)
    assert strict.post(reverse("conversations:archive", args=[conversation.id]), {"archived": "1"}).status_code == 403
    assert strict.post(reverse("conversations:delete", args=[conversation.id])).status_code == 403
    conversation.refresh_from_db()
    assert not conversation.archived


def test_delete_confirms_then_deletes(as_member, org_a):
    conversation = make_conversation(org_a.member, "Throwaway", messages=[(Role.USER, "x")])
    client = as_member(org_a.member)
    confirm = client.get(reverse("conversations:delete", args=[conversation.id]))
    assert confirm.status_code == 200
    assert "Delete this conversation?" in confirm.content.decode()
    assert Conversation.objects.filter(id=conversation.id).exists()
    response = client.post(reverse("conversations:delete", args=[conversation.id]))
    assert response.status_code == 302
    assert not Conversation.objects.filter(id=conversation.id).exists()
    assert not Message.objects.filter(conversation_id=conversation.id).exists()


def test_delete_refuses_while_an_answer_streams(as_member, org_a):
    conversation = make_conversation(
        org_a.member, "Busy one", messages=[(Role.USER, "q"), (Role.ASSISTANT, "partial", Status.STREAMING)]
    )
    response = as_member(org_a.member).post(reverse("conversations:delete", args=[conversation.id]), follow=True)
    assert Conversation.objects.filter(id=conversation.id).exists()
    assert "Stop the answer" in response.content.decode()


def test_list_is_paginated(as_member, org_a):
    for n in range(30):
        make_conversation(org_a.member, f"Chat number {n:02d}", age_minutes=n)
    client = as_member(org_a.member)
    first = client.get(reverse("conversations:list")).content.decode()
    second = client.get(reverse("conversations:list"), {"page": 2}).content.decode()
    assert "Chat number 00" in first and "Chat number 24" in first and "Chat number 25" not in first
    assert "Chat number 25" in second and "Chat number 29" in second and "Chat number 00" not in second
    assert "Page 1 of 2" in first


def test_rename(as_member, org_a):
    conversation = make_conversation(org_a.member, "Old name")
    as_member(org_a.member).post(reverse("conversations:rename", args=[conversation.id]), {"title": "  New name "})
    conversation.refresh_from_db()
    assert conversation.title == "New name"


# --- the chat page -------------------------------------------------------------------------------


def test_chat_page_renders_history_server_side(as_member, org_a):
    conversation = make_conversation(
        org_a.member,
        "Code help",
        messages=[
            (Role.USER, "Show me **python** <b>please</b>"),
            (Role.ASSISTANT, "Here:\n\n```python\nprint('hi')\n```\n\nDone."),
            (Role.USER, "and stop halfway"),
            (Role.ASSISTANT, "Half an ans", Status.CANCELLED),
        ],
    )
    page = as_member(org_a.member).get(reverse("conversations:detail", args=[conversation.id])).content.decode()
    # The user's text is shown as typed (escaped, not markdown).
    assert "Show me **python** &lt;b&gt;please&lt;/b&gt;" in page
    # The answer's markdown is rendered, with highlighting.
    assert '<code class="language-python"><span class="nb">print</span>' in page
    assert "Done.</p>" in page
    # The cancelled partial answer is there, marked as stopped, with its usage.
    assert "Half an ans" in page
    assert "status-cancelled" in page and ">stopped<" in page
    assert "12 in · 34 out · $0.000123" in page
    # Everything the script needs.
    config = json.loads(page.split('id="chat-config" type="application/json">')[1].split("</script>")[0])
    assert config["conversation"] == str(conversation.id)
    assert config["streaming"] is None
    assert config["maxChars"] == org_a.organization.tier.max_message_chars
    assert "vendor/dompurify/purify.min.js" in page and "vendor/markdown-it/markdown-it.umd.min.js" in page


def test_chat_page_passes_a_streaming_answer_to_the_script(as_member, org_a):
    conversation = make_conversation(
        org_a.member, "Live", messages=[(Role.USER, "q"), (Role.ASSISTANT, "so far", Status.STREAMING)]
    )
    answer = conversation.messages.get(role=Role.ASSISTANT)
    Message.objects.filter(id=answer.id).update(last_seq=7)
    page = as_member(org_a.member).get(reverse("conversations:detail", args=[conversation.id])).content.decode()
    config = json.loads(page.split('id="chat-config" type="application/json">')[1].split("</script>")[0])
    assert config["streaming"] == {"id": str(answer.id), "seq": 7, "content": "so far"}
    assert "generating…" in page


def test_history_from_a_model_renders_inert(as_member, org_a):
    conversation = make_conversation(org_a.member, "XSS", messages=[(Role.USER, XSS), (Role.ASSISTANT, XSS)])
    page = as_member(org_a.member).get(reverse("conversations:detail", args=[conversation.id])).content.decode()
    history = page.split('id="chat-messages"')[1].split("</ol>")[0]
    assert "<img" not in history
    assert "<script>" not in history
    assert "javascript:" not in history.replace("[click](javascript:alert(1))", "")
    assert "&lt;img src=x" in history


def test_model_picker_lists_available_models_the_tier_allows(as_member, org_a, tier_factory):
    from llm.registry import models_available

    tier_factory("pro", allowed_models=["demo", "no-such-model"])
    page = as_member(org_a.member).get(reverse("conversations:new")).content.decode()
    picker = page.split('id="chat-model"')[1].split("</select>")[0]
    assert 'value="demo"' in picker
    assert "no-such-model" not in picker
    available = {m.alias for m in models_available()}
    for alias in available - {"demo"}:
        assert f'value="{alias}"' not in picker


def test_new_chat_offers_the_organizations_personas(as_member, org_a, org_b):
    Persona.objects.create(organization=org_a.organization, name="Pirate", system_prompt="Talk like a pirate.")
    Persona.objects.create(organization=org_b.organization, name="Butler", system_prompt="Be formal.")
    page = as_member(org_a.member).get(reverse("conversations:new")).content.decode()
    assert "Pirate" in page
    assert "Butler" not in page


def test_start_creates_a_conversation_with_a_persona(as_member, org_a, org_b):
    mine = Persona.objects.create(organization=org_a.organization, name="Pirate", system_prompt="Arr.")
    theirs = Persona.objects.create(organization=org_b.organization, name="Butler", system_prompt="Sir.")
    client = as_member(org_a.member)
    response = client.post(reverse("conversations:start"), {"model": "demo", "persona": str(mine.id)})
    assert response.status_code == 201
    conversation = Conversation.objects.get(id=response.json()["id"])
    assert conversation.owner == org_a.member.user
    assert conversation.persona == mine and conversation.system_prompt == "Arr."
    refused = client.post(reverse("conversations:start"), {"model": "demo", "persona": str(theirs.id)})
    assert refused.status_code == 404
    assert client.post(reverse("conversations:start"), {"model": "claude-opus-4-5"}).status_code == 400


# --- personas ------------------------------------------------------------------------------------


def test_members_may_not_manage_personas(as_member, org_a):
    persona = Persona.objects.create(organization=org_a.organization, name="Pirate", system_prompt="Arr.")
    client = as_member(org_a.member)
    assert client.get(reverse("conversations:personas")).status_code == 403
    assert client.post(reverse("conversations:personas"), {"name": "X", "system_prompt": "Y"}).status_code == 403
    assert client.get(reverse("conversations:persona_edit", args=[persona.id])).status_code == 403
    assert client.post(reverse("conversations:persona_delete", args=[persona.id])).status_code == 403
    assert Persona.objects.filter(organization=org_a.organization).count() == 1


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_admins_manage_personas(as_member, org_a, role):
    client = as_member(getattr(org_a, role))
    response = client.post(reverse("conversations:personas"), {"name": "Tutor", "system_prompt": "Explain gently."})
    assert response.status_code == 302
    persona = Persona.objects.get(organization=org_a.organization, name="Tutor")
    assert "Tutor" in client.get(reverse("conversations:personas")).content.decode()

    duplicate = client.post(reverse("conversations:personas"), {"name": "Tutor", "system_prompt": "Again."})
    assert duplicate.status_code == 200
    assert "already exists" in duplicate.content.decode()

    client.post(reverse("conversations:persona_edit", args=[persona.id]), {"name": "Coach", "system_prompt": "Push."})
    persona.refresh_from_db()
    assert (persona.name, persona.system_prompt) == ("Coach", "Push.")

    client.post(reverse("conversations:persona_delete", args=[persona.id]))
    assert not Persona.objects.filter(id=persona.id).exists()


def test_another_tenants_persona_is_404(as_member, org_a, org_b, assert_foreign_404):
    persona = Persona.objects.create(organization=org_a.organization, name="Pirate", system_prompt="Arr.")
    client = as_member(org_b.admin)
    assert_foreign_404(client.get(reverse("conversations:persona_edit", args=[persona.id])))
    assert_foreign_404(client.post(reverse("conversations:persona_edit", args=[persona.id]), {"name": "Mine", "system_prompt": "x"}))
    assert_foreign_404(client.post(reverse("conversations:persona_delete", args=[persona.id])))
    persona.refresh_from_db()
    assert persona.name == "Pirate"


def test_new_chat_defaults_to_the_model_of_the_latest_conversation(as_member, org_a):
    client = as_member(org_a.member)
    page = client.get(reverse("conversations:new")).content.decode()
    picker = page.split('id="chat-model"')[1].split("</select>")[0]
    assert picker.count("selected") == 1
    make_conversation(org_a.member, "Earlier", model="demo")
    page = client.get(reverse("conversations:new")).content.decode()
    picker = page.split('id="chat-model"')[1].split("</select>")[0]
    assert '<option value="demo" selected>' in picker


def test_a_long_conversation_shows_its_latest_messages(as_member, org_a, monkeypatch):
    from conversations import views

    monkeypatch.setattr(views, "HISTORY_SIZE", 4)
    conversation = make_conversation(
        org_a.member, "Long", messages=[(Role.USER if n % 2 else Role.ASSISTANT, f"message-{n:02d}") for n in range(1, 11)]
    )
    client = as_member(org_a.member)
    page = client.get(reverse("conversations:detail", args=[conversation.id])).content.decode()
    assert "message-06" not in page and all(f"message-{n:02d}" in page for n in range(7, 11))
    assert "Show the whole conversation" in page
    page = client.get(reverse("conversations:detail", args=[conversation.id]), {"all": "1"}).content.decode()
    assert all(f"message-{n:02d}" in page for n in range(1, 11))
    assert "Show the whole conversation" not in page
