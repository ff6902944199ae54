"""Cross-tenant matrix for the pages (the API has its own: tests/api/test_tenancy.py).

Generated from the URL configuration: every route outside /api/, /v1/ and /admin/ (and outside
allauth, whose routes carry only the visitor's own tokens) must be listed here, so a new page cannot
skip the check. Routes whose path names an object get A's ids and must answer B's owner 404 (and
B's member 403 or 404); every page of B's own organization (the audit log and its CSV, usage,
members, API keys, …) must show nothing of A: not its names, e-mails, ids or audit targets.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.audit import audit_actor, audit_record
from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Organization, User
from accounts.services import api_key_create, api_key_revoke, invitation_create, organization_rename
from billing.reservations import turn_authorize
from billing.settlement import turn_settle
from conversations.models import Conversation, Message, Persona
from llm.types import Usage

pytestmark = pytest.mark.django_db

SKIPPED_PREFIXES = ("api/", "api(", "v1/", "v1(", "admin/")  # the API's matrix; the staff's admin
PROBED_METHODS = ("get", "post")


def page_routes() -> dict[str, tuple[str, Any, list[str]]]:
    """name -> (route, callback, path parameters) for every page route (see the module's docstring)."""
    found: dict[str, tuple[str, Any, list[str]]] = {}

    def walk(patterns, prefix: str, namespace: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern).lstrip("^")
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, route, inner)
                continue
            if not isinstance(pattern, URLPattern) or route.startswith(SKIPPED_PREFIXES):
                continue
            view = getattr(pattern.callback, "view_class", pattern.callback)
            if view.__module__.startswith("allauth."):
                continue
            assert pattern.name, f"page route {route} needs a name (the matrix is keyed by it)"
            parameters = sorted(set(re.findall(r"<(?:\w+:)?(\w+)>", route)) | set(pattern.pattern.regex.groupindex))
            found[namespace + pattern.name] = (route, pattern.callback, parameters)

    walk(get_resolver().url_patterns, "", "")
    return found


@dataclass
class TenantA:
    organization: Organization
    owner: Membership
    member: Membership
    conversation: Conversation
    question: Message
    answer: Message
    persona: Persona
    invitation: Invitation
    key: ApiKey
    markers: list[str] = field(default_factory=list)


@dataclass
class Check:
    """`methods`: method -> form data (A's ids in it for a body object). `kwargs`: A -> path kwargs.
    `expect`: the statuses B's owner may get (404: the object is not B's)."""

    methods: dict[str, Any]
    kwargs: Any = None
    expect: frozenset = frozenset({404})


# Routes whose path (or form) names one of A's objects: B's owner must get 404.
OBJECTS: dict[str, Check] = {
    "invitation_revoke": Check({"post": {}}, lambda a: {"invitation_id": a.invitation.id}),
    "member_change_role": Check({"post": {"role": "admin"}}, lambda a: {"membership_id": a.member.id}),
    "member_remove": Check({"post": {}}, lambda a: {"membership_id": a.member.id}),
    "api_key_revoke": Check({"post": {}}, lambda a: {"key_id": a.key.id}),
    # The path's token is the invitation's secret: with A's organization and no token B learns nothing
    # (the page answers 400 "not valid" without naming A, as for any bad link).
    "invitation_accept": Check(
        {"get": None, "post": {}},
        lambda a: {"organization_id": a.organization.id, "token": "not-the-token"},
        frozenset({400, 404}),
    ),
    "conversations:persona_edit": Check(
        {"get": None, "post": {"name": "stolen", "system_prompt": "stolen"}}, lambda a: {"persona_id": a.persona.id}
    ),
    "conversations:persona_delete": Check({"post": {}}, lambda a: {"persona_id": a.persona.id}),
    "conversations:detail": Check({"get": None}, lambda a: {"conversation_id": a.conversation.id}),
    "conversations:archive": Check({"post": {"archived": "1"}}, lambda a: {"conversation_id": a.conversation.id}),
    "conversations:delete": Check({"get": None, "post": {}}, lambda a: {"conversation_id": a.conversation.id}),
    "conversations:rename": Check({"post": {"title": "stolen"}}, lambda a: {"conversation_id": a.conversation.id}),
    "conversations:message": Check(
        {"get": None}, lambda a: {"conversation_id": a.conversation.id, "message_id": a.answer.id}
    ),
    "billing:member_budget": Check({"post": {"monthly_limit_usd": "1"}}, lambda a: {"membership_id": a.member.id}),
    # ids in the form, not the path
    "organization_switch": Check({"post": lambda a: {"organization_id": str(a.organization.id)}}),
    "conversations:start": Check({"post": lambda a: {"model": "demo", "persona": str(a.persona.id)}}),
}

# B's own pages (GET): nothing of A may appear. The audit log is asked with A's actor and action too.
PAGES: dict[str, list[str]] = {
    "home": [""],
    "dashboard": [""],
    "organization_create": [""],
    "organization_settings": [""],
    "api_keys": [""],
    "organization_audit": ["", "?action=api_key.create", "?action=organization.rename", "?page=2"],
    "organization_audit_export": ["", "?action=api_key.create", "?action=budget.update"],
    "conversations:list": ["", "?archived=1", "?q=secret"],
    "conversations:new": [""],
    "conversations:personas": [""],
    "billing:usage": [""],
    "billing:export": ["", "?start=2000-01-01"],
}

# Routes that act on B's own organization only (their services take B's membership, no id of A).
OWN_ACTIONS: dict[str, dict] = {
    "organization_rename": {"name": "Globex"},
    "invitation_create": {"email": "new-at-globex@example.com"},
}

# Routes that hold no tenant's data at all.
NO_TENANT_DATA = {"healthz", "readyz", "metrics"}


@pytest.fixture
def a_objects(org_a, api_key_factory) -> TenantA:
    """A's objects, named so that any trace of them in B's pages can be found."""
    for membership, email in ((org_a.owner, "acme-owner@acme.test"), (org_a.admin, "acme-admin@acme.test"),
                              (org_a.member, "acme-member@acme.test")):  # fmt: skip
        User.objects.filter(pk=membership.user_id).update(email=email)
        membership.user.refresh_from_db()
    organization = org_a.organization
    conversation = Conversation.objects.create(
        organization=organization, owner=org_a.member.user, title="Acme secret plan", message_count=2
    )
    question = Message.objects.create(
        conversation=conversation, organization=organization, position=1, role="user",
        content="acme-secret-question", client_id=uuid.uuid4(),
    )  # fmt: skip
    answer = Message.objects.create(
        conversation=conversation, organization=organization, position=2, role="assistant",
        content="acme-secret-answer", status="complete", model="demo",
    )  # fmt: skip
    persona = Persona.objects.create(organization=organization, name="Acme persona", system_prompt="acme-prompt")
    invitation = invitation_create(membership=org_a.owner, email="acme-invitee@acme.test")
    key, _ = api_key_create(membership=org_a.member, name="acme-key")
    old_key, _ = api_key_create(membership=org_a.admin, name="acme-old-key")
    api_key_revoke(membership=org_a.owner, key_id=old_key.id)
    organization_rename(membership=org_a.owner, name="Acme Industries")
    with audit_actor(user=org_a.owner.user, ip_address="192.0.2.77"):
        audit_record(
            "budget.update",
            organization=organization,
            target_type="membership",
            target_id=org_a.member.id,
            target_label="acme-event-target",
            changes={"monthly_limit_usd": ["acme-before", "acme-after"]},
        )
    authorization = turn_authorize(
        membership=org_a.member, model="demo", prompt_tokens=5, longest_message_chars=5, max_output_tokens=None,
        request_id="acme-turn-1",
    )  # fmt: skip
    turn_settle(
        authorization=authorization,
        usages=[Usage(5, 7, call_id="acme-turn-1:0", model="demo", provider="demo")],
        membership=org_a.member,
        conversation_id=conversation.id,
        message_id=answer.id,
    )
    organization.refresh_from_db()
    markers = [
        "Acme Industries", "acme-", "@acme.test", "192.0.2.77", key.prefix, old_key.prefix, str(organization.id),
        *[str(obj.id) for obj in (conversation, question, answer, persona, invitation, key, old_key)],
        *[str(m.id) for m in (org_a.owner, org_a.admin, org_a.member)],
        *[str(event.id) for event in AuditEvent.objects.filter(organization=organization)],
    ]  # fmt: skip
    return TenantA(
        organization, org_a.owner, org_a.member, conversation, question, answer, persona, invitation, key, markers
    )


def _client(membership: Membership) -> Client:
    from accounts.middleware import SESSION_KEY

    client = Client()
    client.force_login(membership.user)
    session = client.session
    session[SESSION_KEY] = str(membership.organization_id)
    session.save()
    return client


def _text(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


def _leaks(text: str, markers: list[str]) -> list[str]:
    return [marker for marker in markers if marker in text]


def _data(value, a):
    return value(a) if callable(value) else value


def test_every_page_route_is_in_the_matrix():
    routes = page_routes()
    assert "organization_audit" in routes and "organization_audit_export" in routes
    listed = set(OBJECTS) | set(PAGES) | set(OWN_ACTIONS) | NO_TENANT_DATA
    missing = sorted(set(routes) - listed)
    assert not missing, (
        f"add these page routes to the cross-tenant matrix (tests/accounts/test_page_tenancy.py): {missing}"
    )
    stale = sorted(listed - set(routes))
    assert not stale, f"the matrix names routes that no longer exist: {stale}"
    for name, (route, _, parameters) in routes.items():
        if parameters:
            assert name in OBJECTS, f"{route} names an object in its path: it belongs in OBJECTS (B gets 404)"


def test_b_gets_404_on_a_objects(a_objects, org_b):
    failures = []
    for label, membership in (("B owner", org_b.owner), ("B member", org_b.member)):
        client = _client(membership)
        for name, check in OBJECTS.items():
            url = reverse(name, kwargs=check.kwargs(a_objects) if check.kwargs else None)
            for method in PROBED_METHODS:
                if method in check.methods:
                    body = _data(check.methods[method], a_objects)
                    response = getattr(client, method)(url, body) if body is not None else getattr(client, method)(url)
                    # A member is refused by role before any lookup: 403, or the settings pages' redirect
                    # back with "Only owners and admins…" (the same for any id, so it tells nothing).
                    allowed = check.expect if label == "B owner" else check.expect | {302, 403}
                else:  # a method the view does not answer must not reach A's object either
                    response = getattr(client, method)(url)
                    allowed = {404, 405}
                where = f"{label}: {method.upper()} {url}"
                if response.status_code not in allowed:
                    failures.append(f"{where} → {response.status_code} (expected {sorted(allowed)})")
                # (a full page links back to its own path: the ids B typed are not a leak)
                leaked = _leaks(_text(response), [marker for marker in a_objects.markers if marker not in url])
                if leaked:
                    failures.append(f"{where} leaks {leaked}")
    assert not failures, "\n".join(failures)

    # and nothing of A changed
    conversation = Conversation.objects.get(id=a_objects.conversation.id)
    assert conversation.title == "Acme secret plan" and not conversation.archived
    assert Message.objects.filter(conversation=conversation).count() == 2
    assert Persona.objects.get(id=a_objects.persona.id).name == "Acme persona"
    a_objects.key.refresh_from_db()
    assert a_objects.key.revoked_at is None
    assert Invitation.objects.filter(id=a_objects.invitation.id, accepted_at=None).exists()
    a_objects.member.refresh_from_db()
    assert a_objects.member.role == "member"
    assert not Membership.objects.filter(
        organization=a_objects.organization, user__memberships__organization=org_b.organization
    ).exists()


def test_b_pages_show_nothing_of_a(a_objects, org_b):
    failures = []
    b_key, _ = api_key_create(membership=org_b.owner, name="globex-key")  # B's own pages have rows too
    with audit_actor(user=org_b.owner.user):
        audit_record("budget.update", organization=org_b.organization, target_label="globex-event-target")
    for label, membership in (("B owner", org_b.owner), ("B admin", org_b.admin), ("B member", org_b.member)):
        client = _client(membership)
        for name, queries in PAGES.items():
            for query in queries:
                url = reverse(name) + query
                response = client.get(url)
                if response.status_code >= 500 or response.status_code == 404:
                    failures.append(f"{label}: GET {url} → {response.status_code}")
                leaked = _leaks(_text(response), a_objects.markers)
                if leaked:
                    failures.append(f"{label}: GET {url} leaks {leaked}")
        for name, data in OWN_ACTIONS.items():
            response = client.post(reverse(name), data)
            leaked = _leaks(_text(response), a_objects.markers)
            if response.status_code >= 400 or leaked:
                failures.append(f"{label}: POST {reverse(name)} → {response.status_code} {leaked}")
    assert not failures, "\n".join(failures)
    # Asked for A's actor by name, B's log answers nothing (the page and the CSV)
    owner = _client(org_b.owner)
    for who in (a_objects.owner.user.email, "acme-key"):
        html = _text(owner.get(reverse("organization_audit"), {"actor": who}))
        assert "No events match these filters." in html, who
        rows = _text(owner.get(reverse("organization_audit_export"), {"actor": who})).splitlines()
        assert len(rows) == 1 and rows[0].startswith("created_at,"), rows
    # The owner's audit log is real (B's own event and key are there), just without A.
    owner = _client(org_b.owner)
    html = _text(owner.get(reverse("organization_audit")))
    assert "globex-event-target" in html and b_key.prefix in html
    csv_text = _text(owner.get(reverse("organization_audit_export")))
    assert "globex-event-target" in csv_text and "acme-event-target" not in csv_text
    # B's exports were recorded in B's log, none in A's
    assert AuditEvent.objects.filter(organization=org_b.organization, action="audit.export").exists()
    assert not AuditEvent.objects.filter(organization=a_objects.organization, action="audit.export").exists()
    # nothing of A changed
    a_objects.organization.refresh_from_db()
    assert a_objects.organization.name == "Acme Industries"


def test_a_sees_its_own_markers(a_objects):
    """The markers are real: A's owner finds them where B found none."""
    client = _client(a_objects.owner)
    html = _text(client.get(reverse("organization_audit")))
    for marker in (
        "acme-event-target",
        "acme-before → acme-after",
        "192.0.2.77",
        "acme-owner@acme.test",
        "Acme Industries",
    ):
        assert marker in html, marker
    assert "api_key.create" in html and "acme-key" in html
    csv_text = _text(client.get(reverse("organization_audit_export")))
    assert "acme-event-target" in csv_text and "acme-owner@acme.test" in csv_text
    member = _client(Membership.objects.select_related("user", "organization").get(id=a_objects.member.id))
    assert (
        member.get(reverse("conversations:detail", kwargs={"conversation_id": a_objects.conversation.id})).status_code
        == 200
    )
    assert "Acme persona" in _text(client.get(reverse("conversations:personas")))
