"""Suspending an organization (accounts.oversight, the two commands): audited, and refused everywhere.

A suspended organization's API keys (REST, /v1 with the official SDK, bearer websockets), its turns
(REST sends of a session, the chat page) and its session websockets are refused with
`organization_suspended`; its members still log in and the pages say why. Reactivation restores all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client

from accounts import selectors
from accounts.audit import audit_actor
from accounts.errors import InvalidInput, OrganizationSuspended, PermissionDenied
from accounts.models import ActorType, AuditEvent, Organization, Tier
from accounts.oversight import organization_reactivate, organization_suspend, organization_tier_change
from billing.models import Reservation
from config.errors import ERRORS
from conversations.models import Conversation, Message
from tests.api.conftest import bearer, http, parley_server  # noqa: F401 - fixtures
from tests.conversations.conftest import hub_cleanup, wait_idle, ws_connect  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
REASON = "Unpaid invoices since March"
LIVE = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture(autouse=True)
def fast_demo(settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.001


_OVERSIGHT = ("organization.suspend", "organization.reactivate", "organization.tier_change")


def events(organization) -> list[AuditEvent]:
    """The organization's events of staff actions (creating it and its members recorded others)."""
    return list(AuditEvent.objects.filter(organization=organization, action__in=_OVERSIGHT).order_by("sequence"))


def reload(organization) -> Organization:
    return Organization.objects.get(pk=organization.pk)


# --- the services -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_suspend_and_reactivate_record_one_event_each_and_repeat_as_no_ops(org_a, user_factory):
    staff = user_factory(is_staff=True)
    organization = org_a.organization
    with audit_actor(user=staff, ip_address="203.0.113.9", user_agent="staff browser"):
        assert organization_suspend(organization=organization, reason=f"  {REASON} ") is True
        assert organization_suspend(organization=organization, reason="another reason") is False
    saved = reload(organization)
    assert saved.is_suspended and saved.suspended_reason == REASON
    assert organization.is_suspended and organization.suspended_reason == REASON  # the caller's instance too
    [event] = events(organization)
    assert event.action == "organization.suspend"
    assert (event.actor_type, event.actor_user_id, event.actor_label) == (ActorType.STAFF, staff.pk, staff.email)
    assert (event.ip_address, event.user_agent) == ("203.0.113.9", "staff browser")
    assert (event.target_type, event.target_id) == ("organization", str(organization.pk))
    assert event.changes == {"suspended": [False, True], "suspended_reason": ["", REASON]}

    with audit_actor(user=staff):
        assert organization_reactivate(organization=organization) is True
        assert organization_reactivate(organization=organization) is False
    saved = reload(organization)
    assert not saved.is_suspended and saved.suspended_reason == ""
    assert [e.action for e in events(organization)] == ["organization.suspend", "organization.reactivate"]
    assert events(organization)[-1].changes == {"suspended": [True, False], "suspended_reason": [REASON, ""]}


@pytest.mark.django_db
def test_tier_change_records_the_slugs_before_and_after(org_a, user_factory):
    staff = user_factory(is_staff=True)
    organization = org_a.organization
    free = Tier.objects.get(slug="free")
    with audit_actor(user=staff):
        assert organization_tier_change(organization=organization, tier=free) is True
        assert organization_tier_change(organization=organization, tier=free) is False
    assert reload(organization).tier_id == free.pk
    [event] = events(organization)
    assert event.action == "organization.tier_change" and event.changes == {"tier": ["pro", "free"]}
    assert event.actor_type == ActorType.STAFF


@pytest.mark.django_db
def test_a_failing_suspension_changes_nothing_and_records_nothing(org_a):
    with pytest.raises(InvalidInput):
        organization_suspend(organization=org_a.organization, reason="x" * 501)
    assert not reload(org_a.organization).is_suspended and events(org_a.organization) == []


@pytest.mark.django_db
def test_an_event_that_cannot_be_written_undoes_the_suspension(org_a, monkeypatch):
    import accounts.oversight

    def broken(*args, **kwargs):
        raise RuntimeError("the audit table is unavailable")

    monkeypatch.setattr(accounts.oversight, "audit_record", broken)
    with pytest.raises(RuntimeError):
        organization_suspend(organization=org_a.organization, reason=REASON)
    assert not reload(org_a.organization).is_suspended


@pytest.mark.django_db
def test_a_key_remembered_by_any_process_is_refused_at_once(org_a, api_key_factory):
    """The per-process memory of keys and members is forgotten on suspension, here and elsewhere."""
    key, secret = api_key_factory(org_a.member)
    selectors.api_key_authenticate(secret=secret)  # remembered by this process
    remembered_key = dict(selectors._keys)
    selectors.membership_refresh(membership=org_a.owner)
    remembered_member = dict(selectors._members)
    assert remembered_key and remembered_member

    organization_suspend(organization=org_a.organization, reason=REASON)
    # Another process still holds what it remembered before; the shared mark outdates it.
    selectors._keys.update(remembered_key)
    selectors._members.update(remembered_member)
    with pytest.raises(OrganizationSuspended) as refused:
        selectors.api_key_authenticate(secret=secret)
    assert refused.value.code == "organization_suspended" and isinstance(refused.value, PermissionDenied)
    assert "suspended" in refused.value.message and "support" in refused.value.message
    with pytest.raises(OrganizationSuspended):
        selectors.membership_refresh(membership=org_a.owner)
    with pytest.raises(OrganizationSuspended):
        selectors.membership_refresh(membership=org_a.member, api_key=key)

    organization_reactivate(organization=org_a.organization)
    assert selectors.api_key_authenticate(secret=secret)[1].organization_id == org_a.organization.pk
    assert selectors.membership_refresh(membership=org_a.owner)[0].pk == org_a.owner.pk


def test_the_error_table_answers_403_everywhere():
    row = ERRORS["organization_suspended"]
    assert (row.status, row.openai_status, row.openai_code, row.ws_code) == (
        403, 403, "organization_suspended", "organization_suspended"
    )  # fmt: skip


# --- the commands -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_commands_suspend_and_reactivate_as_a_system_actor(org_a, capsys):
    slug = org_a.organization.slug
    call_command("organization_suspend", slug, "--reason", REASON)
    assert f"Suspended {org_a.organization.name} ({slug}): {REASON}." in capsys.readouterr().out
    call_command("organization_suspend", slug)
    assert "already suspended" in capsys.readouterr().out
    assert reload(org_a.organization).suspended_reason == REASON

    call_command("organization_reactivate", slug)
    assert f"Reactivated {org_a.organization.name} ({slug})." in capsys.readouterr().out
    call_command("organization_reactivate", slug)
    assert "not suspended" in capsys.readouterr().out
    assert not reload(org_a.organization).is_suspended

    suspend, reactivate = events(org_a.organization)
    assert (suspend.action, suspend.actor_type, suspend.actor_label) == (
        "organization.suspend", ActorType.SYSTEM, "manage.py organization_suspend"
    )  # fmt: skip
    assert suspend.actor_user_id is None and suspend.changes["suspended_reason"] == ["", REASON]
    assert (reactivate.action, reactivate.actor_type, reactivate.actor_label) == (
        "organization.reactivate", ActorType.SYSTEM, "manage.py organization_reactivate"
    )  # fmt: skip


def _manage(*args: str) -> subprocess.CompletedProcess:
    """`manage.py ...` in a process of its own, on the test database (a transactional test's rows)."""
    name = settings.DATABASES["default"]["NAME"]
    url = urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}").geturl()
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True, text=True, timeout=120
    )


@LIVE
def test_the_commands_exit_non_zero_for_an_unknown_slug_and_zero_when_they_work(org_a):
    for command in ("organization_suspend", "organization_reactivate"):
        with pytest.raises(CommandError, match="No organization has the slug 'nope'"):
            call_command(command, "nope")
    unknown = _manage("organization_suspend", "nope", "--reason", REASON)
    assert unknown.returncode == 1 and "No organization has the slug 'nope'" in unknown.stderr, unknown
    assert not AuditEvent.objects.filter(action__in=_OVERSIGHT).exists()

    done = _manage("organization_suspend", org_a.organization.slug, "--reason", REASON)
    assert done.returncode == 0 and "Suspended Acme" in done.stdout, done
    assert reload(org_a.organization).suspended_reason == REASON
    again = _manage("organization_reactivate", org_a.organization.slug)
    assert again.returncode == 0 and "Reactivated Acme" in again.stdout, again
    assert [(e.action, e.actor_type) for e in events(org_a.organization)] == [
        ("organization.suspend", ActorType.SYSTEM), ("organization.reactivate", ActorType.SYSTEM)
    ]  # fmt: skip


# --- pages ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_stay_reachable_and_say_why_and_the_chat_page_cannot_send(org_a, login):
    client = login(org_a.member)
    organization_suspend(organization=org_a.organization, reason=REASON)
    for path in ("/dashboard/", "/chat/", "/chat/new/", "/usage/", "/organization/"):
        page = client.get(path, follow=True)
        assert page.status_code == 200, path
        text = page.content.decode()
        assert "org-suspended-banner" in text and f"{org_a.organization.name} is suspended" in text, path
        assert REASON in text, path
    chat = client.get("/chat/new/").content.decode()
    assert "This organization is suspended: messages cannot be sent." in chat and "disabled></textarea>" in chat
    started = client.post("/chat/start/", {"model": "demo", "persona": ""})
    assert started.status_code == 403 and started.json()["code"] == "organization_suspended"
    assert not Conversation.objects.exists()

    organization_reactivate(organization=org_a.organization)
    chat = client.get("/chat/new/").content.decode()
    assert "org-suspended-banner" not in chat and "disabled></textarea>" not in chat


@pytest.mark.django_db
def test_members_can_still_log_in(org_a, password):
    organization_suspend(organization=org_a.organization, reason=REASON)
    client = Client()
    response = client.post("/accounts/login/", {"login": org_a.member.user.email, "password": password})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200


# --- REST, /v1 (the official SDK) ---------------------------------------------------------------------


def _session(http, user) -> dict[str, str]:  # noqa: F811 - `http` is the fixture's client
    client = Client()
    client.force_login(user)
    token = "c" * 32
    http.cookies.set(settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
    http.cookies.set("csrftoken", token)
    return {"X-CSRFToken": token}


def _refused_rest(response) -> dict:
    assert response.status_code == 403, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "organization_suspended", body
    assert "suspended" in body["error"]["message"]
    return body["error"]


@LIVE
def test_rest_and_v1_are_refused_while_suspended_and_work_again_after(http, parley_server, org_a, api_key_factory):  # noqa: F811
    secret = api_key_factory(org_a.member)[1]
    sdk = openai.OpenAI(base_url=parley_server.url + "/v1", api_key=secret, max_retries=0, timeout=30)
    conversation = http.post("/api/v1/conversations/", json={"title": "kept"}, headers=bearer(secret)).json()
    assert sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "/echo hi"}])

    organization_suspend(organization=org_a.organization, reason=REASON)
    messages_before = Message.objects.count()
    # API keys: every REST call, whatever it is.
    _refused_rest(http.get("/api/v1/conversations/", headers=bearer(secret)))
    _refused_rest(http.post("/api/v1/conversations/send/", json={"content": "/echo no"}, headers=bearer(secret)))
    # /v1 with the official SDK: OpenAI's shape, a PermissionDeniedError.
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "/echo no"}])
    assert refused.value.code == "organization_suspended" and "suspended" in refused.value.message
    assert refused.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.PermissionDeniedError):
        sdk.models.list()
    # A session (the chat page's member): reads work, a sent message is refused and nothing is kept.
    headers = _session(http, org_a.member.user)
    assert http.get("/api/v1/conversations/").status_code == 200
    _refused_rest(http.post("/api/v1/conversations/send/", json={"content": "/echo no"}, headers=headers))
    _refused_rest(
        http.post(
            f"/api/v1/conversations/{conversation['id']}/messages/", json={"content": "/echo no"}, headers=headers
        )
    )
    assert Message.objects.count() == messages_before
    assert not Reservation.objects.filter(status="open").exists()

    organization_reactivate(organization=org_a.organization)
    assert http.get("/api/v1/conversations/", headers=bearer(secret)).status_code == 200
    sent = http.post("/api/v1/conversations/send/", json={"content": "/echo again"}, headers=headers)
    assert sent.status_code == 201, sent.text[:300]
    completion = sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "/echo back"}])
    assert completion.choices[0].message.content


# --- websockets -------------------------------------------------------------------------------------


async def _closed_after_error(client) -> tuple[str, int, str]:
    error = json.loads(await client.communicator.receive_from(timeout=10))
    output = await client.communicator.receive_output(timeout=10)
    assert error["type"] == "error" and output["type"] == "websocket.close", (error, output)
    return error["code"], output["code"], error["message"]


def _session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://localhost:8000")]


@LIVE
async def test_websockets_are_refused_at_connect_and_work_again_after(org_a, api_key_factory, ws_connect):  # noqa: F811
    _, secret = await database_sync_to_async(api_key_factory)(org_a.member)
    session = await database_sync_to_async(_session_headers)(org_a.owner.user)
    await database_sync_to_async(organization_suspend)(organization=org_a.organization, reason=REASON)

    code, close, message = await _closed_after_error(await ws_connect(secret=secret))
    assert (code, close) == ("organization_suspended", 4403) and "suspended" in message
    code, close, _ = await _closed_after_error(await ws_connect(headers=session))
    assert (code, close) == ("organization_suspended", 4403)

    await database_sync_to_async(organization_reactivate)(organization=org_a.organization)
    for client in (await ws_connect(secret=secret), await ws_connect(headers=session)):
        await client.send_message("/echo back again")
        frames = await client.until_finished()
        assert frames[-1]["message"]["content"] == "back again"
    await wait_idle()


@LIVE
async def test_an_open_socket_is_refused_at_its_next_turn(org_a, api_key_factory, ws_connect):  # noqa: F811
    _, secret = await database_sync_to_async(api_key_factory)(org_a.member)
    session = await database_sync_to_async(_session_headers)(org_a.owner.user)
    bearer_client, session_client = await ws_connect(secret=secret), await ws_connect(headers=session)
    await database_sync_to_async(organization_suspend)(organization=org_a.organization, reason=REASON)
    for client in (bearer_client, session_client):
        await client.send_message("/echo refused")
        code, close, _ = await _closed_after_error(client)
        assert (code, close) == ("organization_suspended", 4403)
    assert not await database_sync_to_async(Message.objects.exists)()


@pytest.mark.django_db
def test_the_turn_engine_refuses_a_suspended_organization_whoever_calls(org_a):
    """Tasks (titles, summaries) and any entry point that skips the credential checks."""
    from conversations import engine
    from llm.types import ChatRequest
    from llm.types import Message as LLMMessage

    organization_suspend(organization=org_a.organization, reason=REASON)
    membership = selectors.membership_get(user=org_a.member.user, organization_id=org_a.organization.pk)
    with pytest.raises(OrganizationSuspended):
        engine.turn_prepare(
            caller=engine.Caller(membership=membership, entry="task"),
            request=ChatRequest(model="demo", messages=[LLMMessage(role="user", content="hi")], request_id="suspended-task"),
        )
    assert not Reservation.objects.exists()
