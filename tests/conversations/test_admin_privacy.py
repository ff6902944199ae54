"""Tenant privacy in the admin: staff (superusers included) see no conversation content without an
audited break-glass grant for that organization, and only until it expires."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from accounts import content_access
from accounts.content_access import (
    content_access_allowed,
    content_access_request,
    content_access_revoke,
)
from accounts.errors import InvalidInput, NotFound, PermissionDenied
from accounts.models import AuditEvent, ContentAccessGrant
from conversations.models import Conversation, Message, Persona

REASON = "Support ticket #4711: the member reports a garbled answer."
ACCESS_URL = "/admin/conversations/conversation/access/"

# One distinct secret per content field, per organization.
FIELDS = ("title", "summary", "system", "persona", "user", "answer", "tool")


def secrets_of(tag: str) -> dict[str, str]:
    return {field: f"{field}-secret-{tag}-q7x" for field in FIELDS}


def seed(tenant, tag: str):
    secret = secrets_of(tag)
    organization = tenant.organization
    persona = Persona.objects.create(organization=organization, name=f"Helper {tag}", system_prompt=secret["persona"])
    conversation = Conversation.objects.create(
        organization=organization,
        owner=tenant.member.user,
        title=secret["title"],
        summary=secret["summary"],
        system_prompt=secret["system"],
        persona=persona,
        message_count=2,
    )
    question = Message.objects.create(
        conversation=conversation, organization=organization, position=1, role="user", content=secret["user"]
    )
    answer = Message.objects.create(
        conversation=conversation,
        organization=organization,
        position=2,
        role="assistant",
        content=secret["answer"],
        model="demo",
        output_tokens=7,
        tool_events=[{"call": {"id": "c1", "name": "search", "arguments": {"q": secret["tool"]}}, "result": "ok"}],
    )
    return {"secret": secret, "persona": persona, "conversation": conversation, "messages": [question, answer]}


def pages(data) -> list[str]:
    conversation, persona = data["conversation"], data["persona"]
    urls = [
        "/admin/conversations/conversation/",
        f"/admin/conversations/conversation/{conversation.id}/change/",
        f"/admin/conversations/conversation/{conversation.id}/history/",
        "/admin/conversations/message/",
        "/admin/conversations/persona/",
        f"/admin/conversations/persona/{persona.id}/change/",
        "/admin/conversations/conversation/?_popup=1&_to_field=id",
    ]
    urls += [f"/admin/conversations/message/{message.id}/change/" for message in data["messages"]]
    return urls


@pytest.fixture
def staff(user_factory):
    """A staff user who may view conversations, messages and personas (no superuser)."""
    user = user_factory(is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="conversations", codename__in=["view_conversation", "view_message", "view_persona"]
        )
    )
    return user


@pytest.fixture
def superuser(user_factory):
    return user_factory(is_staff=True, is_superuser=True)


@pytest.fixture(params=["staff", "superuser"])
def viewer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def seeded(org_a, org_b):
    return {"a": seed(org_a, "A"), "b": seed(org_b, "B")}


def html_of(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def assert_hidden(client, data) -> None:
    for url in pages(data):
        html = html_of(client, url)
        for field, secret in data["secret"].items():
            assert secret not in html, f"{field} content shown on {url}"


def events(organization, action="staff.content_access"):
    return list(AuditEvent.objects.filter(organization=organization, action=action).order_by("sequence"))


# --- hidden by default ------------------------------------------------------------------------


def test_no_content_without_a_grant(client, viewer, seeded):
    client.force_login(viewer)
    for data in seeded.values():
        assert_hidden(client, data)
    answer = seeded["a"]["messages"][1]
    html = html_of(client, f"/admin/conversations/message/{answer.id}/change/")
    # Metadata stays visible; the content is a placeholder that links to the request page.
    assert "Hidden" in html and f"{ACCESS_URL}?organization={answer.organization_id}" in html
    assert "demo" in html and str(answer.conversation_id) in html


def test_search_never_matches_content(client, viewer, seeded, org_a):
    client.force_login(viewer)
    content_access_request(staff_user=viewer, organization=org_a.organization, reason=REASON)
    secret = seeded["a"]["secret"]
    for url, term in [
        ("/admin/conversations/message/", secret["answer"]),
        ("/admin/conversations/message/", secret["user"]),
        ("/admin/conversations/conversation/", secret["title"]),
        ("/admin/conversations/conversation/", secret["summary"]),
        ("/admin/conversations/persona/", secret["persona"]),
    ]:
        response = client.get(url, {"q": term})
        assert response.status_code == 200
        assert response.context["cl"].result_count == 0, (url, term)
    # Ids still find what staff look for.
    conversation = seeded["a"]["conversation"]
    response = client.get("/admin/conversations/message/", {"q": str(conversation.id)})
    assert response.context["cl"].result_count == 2


def test_content_cannot_be_changed_or_deleted(client, superuser, seeded, org_a):
    client.force_login(superuser)
    content_access_request(staff_user=superuser, organization=org_a.organization, reason=REASON)
    conversation, persona = seeded["a"]["conversation"], seeded["a"]["persona"]
    answer = seeded["a"]["messages"][1]
    html = html_of(client, f"/admin/conversations/conversation/{conversation.id}/change/")
    assert 'name="title"' not in html and 'name="summary"' not in html and 'name="system_prompt"' not in html
    response = client.post(f"/admin/conversations/conversation/{conversation.id}/change/", {"title": "Edited"})
    assert response.status_code == 403
    assert 'name="system_prompt"' not in html_of(client, f"/admin/conversations/persona/{persona.id}/change/")
    assert client.get(f"/admin/conversations/conversation/{conversation.id}/delete/").status_code == 403
    assert client.get(f"/admin/conversations/message/{answer.id}/delete/").status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == seeded["a"]["secret"]["title"]


# --- with a grant -----------------------------------------------------------------------------


def test_a_grant_shows_that_organization_only(client, viewer, seeded, org_a):
    client.force_login(viewer)
    response = client.post(ACCESS_URL, {"organization": org_a.organization.id, "reason": REASON, "minutes": 30})
    assert response.status_code == 302
    assert response["Location"] == f"/admin/conversations/conversation/?organization__id__exact={org_a.organization.id}"

    a, b = seeded["a"], seeded["b"]
    conversation_page = html_of(client, f"/admin/conversations/conversation/{a['conversation'].id}/change/")
    for field in ("title", "summary", "system", "user", "answer"):
        assert a["secret"][field] in conversation_page, field
    assert a["secret"]["tool"] in html_of(client, f"/admin/conversations/message/{a['messages'][1].id}/change/")
    assert a["secret"]["persona"] in html_of(client, f"/admin/conversations/persona/{a['persona'].id}/change/")
    listing = html_of(client, response["Location"])
    assert a["secret"]["title"] in listing
    assert org_a.organization.name in listing and "Your content access" in listing

    assert_hidden(client, b)
    assert a["secret"]["title"] in html_of(client, "/admin/conversations/conversation/")


def test_a_grant_covers_its_staff_user_only(client, staff, superuser, seeded, org_a):
    content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    client.force_login(superuser)
    assert_hidden(client, seeded["a"])


def test_expired_and_revoked_grants_hide_content_again(client, viewer, seeded, org_a):
    client.force_login(viewer)
    a = seeded["a"]
    url = f"/admin/conversations/message/{a['messages'][1].id}/change/"
    grant = content_access_request(staff_user=viewer, organization=org_a.organization, reason=REASON, minutes=5)
    assert a["secret"]["answer"] in html_of(client, url)
    ContentAccessGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not content_access_allowed(user=viewer, organization_id=org_a.organization.id)
    assert_hidden(client, a)

    grant = content_access_request(staff_user=viewer, organization=org_a.organization, reason=REASON)
    assert a["secret"]["answer"] in html_of(client, url)
    response = client.post(f"{ACCESS_URL}{grant.id}/revoke/")
    assert response.status_code == 302
    assert_hidden(client, a)
    revoked = events(org_a.organization)[-1]
    assert list(revoked.changes) == ["revoked_at"] and revoked.target_id == str(grant.id)


def test_time_moves_past_the_grant(client, staff, seeded, org_a, monkeypatch):
    """Moving the clock (not the row) past expires_at hides the content too."""
    client.force_login(staff)
    grant = content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON, minutes=60)
    later = grant.expires_at + timedelta(seconds=1)
    monkeypatch.setattr(content_access.timezone, "now", lambda: later)
    assert not content_access_allowed(user=staff, organization_id=org_a.organization.id)
    assert_hidden(client, seeded["a"])


# --- the request and its audit event ----------------------------------------------------------


def test_request_writes_one_event_in_that_organizations_chain(client, staff, org_a, org_b):
    client.force_login(staff)
    before_b = len(events(org_b.organization))
    assert "Request access" in html_of(client, f"{ACCESS_URL}?organization={org_a.organization.id}")
    response = client.post(
        ACCESS_URL,
        {"organization": org_a.organization.id, "reason": REASON, "minutes": 45},
        HTTP_USER_AGENT="pytest-admin",
    )
    assert response.status_code == 302
    grant = ContentAccessGrant.objects.get(staff_user=staff)
    assert grant.organization_id == org_a.organization.id and grant.reason == REASON
    assert timedelta(minutes=44) < grant.expires_at - timezone.now() <= timedelta(minutes=45)

    [event] = events(org_a.organization)
    assert event.actor_type == "staff" and event.actor_user_id == staff.id and event.actor_label == staff.email
    assert event.target_type == "contentaccessgrant" and event.target_id == str(grant.id)
    assert event.changes["reason"] == [None, REASON]
    assert event.changes["minutes"] == [None, 45]
    assert event.changes["expires_at"][1].startswith(grant.expires_at.strftime("%Y-%m-%dT%H:%M"))
    assert event.user_agent == "pytest-admin"
    assert len(events(org_b.organization)) == before_b
    assert not AuditEvent.objects.filter(organization__isnull=True, action="staff.content_access").exists()


@pytest.mark.parametrize("reason", ["", "   ", "too short"])
def test_a_request_without_a_reason_is_refused(client, viewer, org_a, reason):
    client.force_login(viewer)
    response = client.post(ACCESS_URL, {"organization": org_a.organization.id, "reason": reason, "minutes": 60})
    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert not ContentAccessGrant.objects.exists()
    assert events(org_a.organization) == []
    with pytest.raises(InvalidInput):
        content_access_request(staff_user=viewer, organization=org_a.organization, reason=reason)
    assert not ContentAccessGrant.objects.exists() and events(org_a.organization) == []


def test_non_staff_cannot_ask(client, org_a, user_factory):
    member = org_a.owner.user
    client.force_login(member)
    response = client.post(ACCESS_URL, {"organization": org_a.organization.id, "reason": REASON, "minutes": 60})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    with pytest.raises(PermissionDenied):
        content_access_request(staff_user=member, organization=org_a.organization, reason=REASON)
    inactive = user_factory(is_staff=True, is_active=False)
    with pytest.raises(PermissionDenied):
        content_access_request(staff_user=inactive, organization=org_a.organization, reason=REASON)
    assert not ContentAccessGrant.objects.exists() and events(org_a.organization) == []


def test_a_grant_ends_when_its_holder_is_no_longer_staff(staff, org_a):
    content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    assert content_access_allowed(user=staff, organization_id=org_a.organization.id)
    staff.is_staff = False
    staff.save()
    assert not content_access_allowed(user=staff, organization_id=org_a.organization.id)


def test_duration_default_and_bounds(staff, org_a, settings):
    settings.PARLEY_CONTENT_ACCESS_MINUTES = 20
    grant = content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    assert timedelta(minutes=19) < grant.expires_at - grant.created_at <= timedelta(minutes=20)
    settings.PARLEY_CONTENT_ACCESS_MINUTES = 100_000  # a misconfiguration never means "for ever"
    grant = content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    assert grant.expires_at - grant.created_at == timedelta(minutes=content_access.MAX_MINUTES)
    del settings.PARLEY_CONTENT_ACCESS_MINUTES
    grant = content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    assert grant.expires_at - grant.created_at == timedelta(minutes=60)
    for minutes in (0, content_access.MIN_MINUTES - 1, content_access.MAX_MINUTES + 1):
        with pytest.raises(InvalidInput):
            content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON, minutes=minutes)
    assert len(events(org_a.organization)) == 3


def test_a_failing_event_leaves_no_grant(staff, org_a, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(content_access, "audit_record", broken)
    with pytest.raises(RuntimeError):
        content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    assert not ContentAccessGrant.objects.exists()


def test_revoke_only_your_own_grant(client, staff, superuser, org_a):
    grant = content_access_request(staff_user=staff, organization=org_a.organization, reason=REASON)
    with pytest.raises(NotFound):
        content_access_revoke(staff_user=superuser, grant_id=grant.id)
    with pytest.raises(NotFound):
        content_access_revoke(staff_user=staff, grant_id="not-a-uuid")
    client.force_login(superuser)
    assert client.post(f"{ACCESS_URL}{grant.id}/revoke/").status_code == 404
    assert client.get(f"{ACCESS_URL}{grant.id}/revoke/").status_code == 405
    assert content_access_allowed(user=staff, organization_id=org_a.organization.id)
    content_access_revoke(staff_user=staff, grant_id=grant.id)
    content_access_revoke(staff_user=staff, grant_id=grant.id)  # again: nothing more happens
    assert not content_access_allowed(user=staff, organization_id=org_a.organization.id)
    assert [sorted(event.changes) for event in events(org_a.organization)] == [
        ["expires_at", "minutes", "reason"],
        ["revoked_at"],
    ]
