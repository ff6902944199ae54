"""Cross-tenant matrix: B's members (by API key and by session) on A's objects get 404, and lists hold nothing of A.

The matrix is generated from the URL configuration: every route under /api/v1/ and /v1/ (and every
method its view answers) must have an entry in ROUTES, so a new endpoint cannot skip the check.
The websocket gets the same treatment.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.services import invitation_create
from billing.reservations import turn_authorize
from billing.settlement import turn_settle
from conversations.models import Conversation, Message
from llm.types import Usage

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

METHODS = ("get", "post", "put", "patch", "delete")
PREFIXES = ("api/v1/", "v1/")


def api_routes() -> dict[str, tuple[str, Any]]:
    """name -> (route, view callback) for every URL pattern under the API prefixes."""
    found: dict[str, tuple[str, Any]] = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(PREFIXES):
                assert pattern.name, f"API route {route} needs a name (the matrix is keyed by it)"
                found[pattern.name] = (route, pattern.callback)

    walk(get_resolver().url_patterns, "")
    return found


def view_methods(callback) -> set[str]:
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if cls is None:
        return set()  # a function view: its methods are declared in ROUTES
    return {m for m in METHODS if hasattr(cls, m)}


@dataclass
class Route:
    """`object`: path ids are A's (B must get 404). `list`: B's own scope (nothing of A may appear)."""

    kind: str
    methods: dict[str, dict | None]  # method -> JSON body
    kwargs: Any = None  # A -> path kwargs
    headers: dict[str, Any] = field(default_factory=dict)  # method -> A -> extra headers
    key_only: bool = False  # the OpenAI-compatible endpoint takes API keys only (a session gets 401)


ROUTES: dict[str, Route] = {
    "api-conversations": Route("list", {"get": None, "post": {"title": "b's"}}),
    "api-conversation-send": Route("list", {"post": {"content": "/echo from b"}}),
    "api-conversation": Route(
        "object", {"get": None, "patch": {"title": "stolen"}, "delete": None}, lambda a: {"conversation_id": a.conversation.id}
    ),
    "api-conversation-messages": Route(
        "object", {"get": None, "post": {"content": "hi"}}, lambda a: {"conversation_id": a.conversation.id}
    ),
    "api-conversation-regenerate": Route("object", {"post": {}}, lambda a: {"conversation_id": a.conversation.id}),
    "api-message": Route("object", {"get": None}, lambda a: {"message_id": a.answer.id}),
    "api-message-stop": Route("object", {"post": None}, lambda a: {"message_id": a.answer.id}),
    "api-models": Route("list", {"get": None}),
    "api-usage": Route("list", {"get": None}),
    "api-usage-ledger": Route("list", {"get": None}),
    "api-organization": Route("list", {"get": None, "patch": {"name": "Globex renamed"}}),
    "api-members": Route("list", {"get": None}),
    "api-member": Route(
        "object", {"get": None, "patch": {"role": "admin"}, "delete": None}, lambda a: {"membership_id": a.member_id}
    ),
    "api-invitations": Route("list", {"get": None, "post": {"email": "new-at-globex@example.com"}}),
    "api-invitation": Route("object", {"delete": None}, lambda a: {"invitation_id": a.invitation.id}),
    "api-keys": Route("list", {"get": None, "post": {"name": "b key"}}),
    "api-key": Route("object", {"get": None, "delete": None}, lambda a: {"key_id": a.key.id}),
    "openai-chat-completions": Route(
        "object",
        {"post": {"model": "demo", "messages": [{"role": "user", "content": "/echo hi"}]}},
        lambda a: {},
        headers={"post": lambda a: {"X-Parley-Conversation": str(a.conversation.id)}},
        key_only=True,
    ),
    "openai-models": Route("list", {"get": None}, key_only=True),
    "openai-model": Route("list", {"get": None}, lambda a: {"model_id": "demo"}, key_only=True),
}
# Requests without A's ids on routes that can also name them (no leak in B's own answers).
EXTRA_LIST_CHECKS = [("openai-chat-completions", "post", {"model": "demo", "messages": [{"role": "user", "content": "/echo hi"}]})]


@dataclass
class TenantA:
    conversation: Conversation
    question: Message
    answer: Message
    invitation: Any
    key: Any
    secret: str
    member_id: uuid.UUID
    markers: list[str]


@pytest.fixture
def a_objects(org_a, api_key_factory) -> TenantA:
    member = org_a.member
    conversation = Conversation.objects.create(
        organization=org_a.organization, owner=member.user, title="Acme secret plan", message_count=2
    )
    question = Message.objects.create(
        conversation=conversation, organization=org_a.organization, position=1, role="user",
        content="acme-secret-question", client_id=uuid.uuid4(),
    )  # fmt: skip
    answer = Message.objects.create(
        conversation=conversation, organization=org_a.organization, position=2, role="assistant",
        content="acme-secret-answer", status="complete", model="demo",
    )  # fmt: skip
    invitation = invitation_create(membership=org_a.owner, email="acme-invitee@example.com")
    key, secret = api_key_factory(member, name="acme-key")
    authorization = turn_authorize(
        membership=member, model="demo", prompt_tokens=5, longest_message_chars=5, max_output_tokens=None, request_id="acme-turn-1"
    )
    turn_settle(
        authorization=authorization,
        usages=[Usage(5, 7, call_id="acme-turn-1:0", model="demo", provider="demo")],
        membership=member,
        conversation_id=conversation.id,
        message_id=answer.id,
    )
    markers = [
        str(org_a.organization.id), "Acme", "acme-secret", "acme-invitee", "acme-key", "acme-turn-1", key.prefix,
        str(conversation.id), str(question.id), str(answer.id), str(invitation.id), str(key.id),
        *[str(m.id) for m in (org_a.owner, org_a.admin, org_a.member)],
        *[f'"{m.user.email}"' for m in (org_a.owner, org_a.admin, org_a.member)],
    ]  # fmt: skip
    return TenantA(conversation, question, answer, invitation, key, secret, member.id, markers)


CSRF = "a" * 32


@pytest.fixture
def principals(org_b, api_key_factory) -> list[tuple[str, bool, dict, dict]]:
    """(label, is_admin, headers, cookies) for B's admin and member, by API key and by session."""
    result = []
    for label, membership in (("admin", org_b.admin), ("member", org_b.member)):
        _, secret = api_key_factory(membership)
        result.append((f"B {label} key", membership.is_admin, {"Authorization": f"Bearer {secret}"}, {}))
        client = Client()
        client.force_login(membership.user)
        cookies = {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF}
        result.append((f"B {label} session", membership.is_admin, {"X-CSRFToken": CSRF}, cookies))
    return result


def test_every_api_route_is_in_the_matrix():
    routes = api_routes()
    assert routes, "no API routes found"
    missing = sorted(set(routes) - set(ROUTES))
    assert not missing, f"add these routes to the cross-tenant matrix: {missing}"
    stale = sorted(set(ROUTES) - set(routes))
    assert not stale, f"the matrix names routes that no longer exist: {stale}"
    for name, (route, callback) in routes.items():
        unchecked = view_methods(callback) - set(ROUTES[name].methods)
        assert not unchecked, f"{route}: methods {sorted(unchecked)} are not in the matrix"


def _url(route: str, kwargs: dict) -> str:
    from django.urls import reverse

    return reverse(route, kwargs=kwargs)


def _leaks(text: str, markers: list[str]) -> list[str]:
    return [marker for marker in markers if marker in text]


def test_cross_tenant_matrix(http, a_objects, principals, org_a):
    failures = []
    for name, spec in ROUTES.items():
        kwargs = spec.kwargs(a_objects) if spec.kwargs else {}
        url = _url(name, kwargs)
        for method, body in spec.methods.items():
            for label, is_admin, headers, cookies in principals:
                extra = spec.headers[method](a_objects) if method in spec.headers else {}
                http.cookies.clear()
                for cookie, value in cookies.items():
                    http.cookies.set(cookie, value)
                response = http.request(
                    method.upper(), url, headers={**headers, **extra}, json=body if body is not None else None
                )
                text = response.text
                where = f"{label}: {method.upper()} {url}"
                if spec.key_only and cookies:
                    if response.status_code != 401:
                        failures.append(f"{where} → {response.status_code} (expected 401: API keys only)")
                elif spec.kind == "object":
                    allowed = {404} if is_admin else {403, 404}
                    if response.status_code not in allowed:
                        failures.append(f"{where} → {response.status_code} (expected {sorted(allowed)}): {text[:200]}")
                else:
                    if response.status_code >= 500 or response.status_code in (401, 404):
                        failures.append(f"{where} → {response.status_code}: {text[:200]}")
                leaked = _leaks(text, a_objects.markers)
                if leaked:
                    failures.append(f"{where} leaks {leaked}")
    for name, method, body in EXTRA_LIST_CHECKS:
        for label, _, headers, cookies in principals:
            if cookies:
                continue  # the OpenAI-compatible endpoint takes API keys only
            http.cookies.clear()
            response = http.request(method.upper(), _url(name, {}), headers=headers, json=body)
            if response.status_code != 200 or _leaks(response.text, a_objects.markers):
                failures.append(f"{label}: {method.upper()} {name} → {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)

    # and nothing of A changed
    conversation = Conversation.objects.get(id=a_objects.conversation.id)
    assert conversation.title == "Acme secret plan" and conversation.message_count == 2
    assert Message.objects.filter(conversation=conversation).count() == 2
    a_objects.key.refresh_from_db()
    assert a_objects.key.revoked_at is None
    assert type(a_objects.invitation).objects.filter(id=a_objects.invitation.id).exists()
    org_a.member.refresh_from_db()
    assert org_a.member.role == "member"


def test_a_sees_its_own_objects(http, a_objects):
    """The matrix's ids are real: A's own key reaches them (so B's 404s mean 'not yours', not 'no such thing')."""
    headers = {"Authorization": f"Bearer {a_objects.secret}"}
    assert http.get(f"/api/v1/conversations/{a_objects.conversation.id}/", headers=headers).status_code == 200
    assert http.get(f"/api/v1/messages/{a_objects.answer.id}/", headers=headers).status_code == 200
    assert http.get(f"/api/v1/api-keys/{a_objects.key.id}/", headers=headers).status_code == 200
    assert http.get(f"/api/v1/organization/members/{a_objects.member_id}/", headers=headers).status_code == 200
    listed = http.get("/api/v1/conversations/", headers=headers).json()
    assert [c["id"] for c in listed["results"]] == [str(a_objects.conversation.id)]


# --- the websocket ------------------------------------------------------------------------------


async def _ws(secret: str) -> WebsocketCommunicator:
    from config.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Bearer {secret}".encode())])
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def test_websocket_cross_tenant(a_objects, org_b, api_key_factory):
    _, secret = await database_sync_to_async(api_key_factory)(org_b.admin)
    communicator = await _ws(secret)
    conversation, question, answer = str(a_objects.conversation.id), str(a_objects.question.id), str(a_objects.answer.id)
    frames = [
        {"type": "conversation.subscribe", "conversation": conversation},
        {"type": "message.send", "conversation": conversation, "content": "hi", "client_id": str(uuid.uuid4())},
        {"type": "generation.stop", "message": answer},
        {"type": "message.regenerate", "conversation": conversation, "client_id": str(uuid.uuid4())},
        {"type": "message.edit", "message": question, "content": "changed", "client_id": str(uuid.uuid4())},
    ]
    try:
        for frame in frames:
            await communicator.send_to(text_data=json.dumps(frame))
            reply = json.loads(await communicator.receive_from(timeout=10))
            assert reply["type"] == "error" and reply["code"] == "not_found", (frame["type"], reply)
            assert not _leaks(json.dumps(reply), a_objects.markers)
        assert await communicator.receive_nothing(timeout=0.3)
    finally:
        await communicator.disconnect()
    # nothing of A changed
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conversation).count)() == 2
