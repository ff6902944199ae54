"""The REST API: conversations, messages, turns, models, usage, organization and keys; one error shape."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx2 as httpx
import pytest
from django.test import Client

from billing.models import LedgerEntry
from conversations.models import Message
from tests.api.conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "retry_after"} <= set(body["error"]), body
    return body["error"]


def test_conversations_crud(http, key_a):
    h = bearer(key_a)
    created = http.post("/api/v1/conversations/", json={"title": "Plan for Q3"}, headers=h)
    assert created.status_code == 201
    cid = created.json()["id"]
    assert created.json()["model"] == "demo"
    listed = http.get("/api/v1/conversations/", headers=h).json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == cid
    renamed = http.patch(f"/api/v1/conversations/{cid}/", json={"title": "Plan for Q4"}, headers=h)
    assert renamed.status_code == 200 and renamed.json()["title"] == "Plan for Q4"
    assert http.get("/api/v1/conversations/", params={"search": "Q4"}, headers=h).json()["count"] == 1
    assert http.get("/api/v1/conversations/", params={"search": "nothing like it"}, headers=h).json()["count"] == 0
    archived = http.patch(f"/api/v1/conversations/{cid}/", json={"archived": True}, headers=h)
    assert archived.json()["archived"] is True
    assert http.get("/api/v1/conversations/", headers=h).json()["count"] == 0
    assert http.get("/api/v1/conversations/", params={"archived": "true"}, headers=h).json()["count"] == 1
    assert http.get("/api/v1/conversations/", params={"archived": "all"}, headers=h).json()["count"] == 1
    assert http.get("/api/v1/conversations/", params={"archived": "maybe"}, headers=h).status_code == 422
    assert http.delete(f"/api/v1/conversations/{cid}/", headers=h).status_code == 204
    gone = http.get(f"/api/v1/conversations/{cid}/", headers=h)
    assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"


def test_send_waits_for_the_answer_and_is_idempotent(http, key_a):
    h = bearer(key_a)
    client_id = str(uuid.uuid4())
    sent = http.post("/api/v1/conversations/send/", json={"content": "/echo hello world", "client_id": client_id}, headers=h)
    assert sent.status_code == 201
    turn = sent.json()
    assert turn["created"] is True
    assert turn["user_message"]["content"] == "/echo hello world"
    answer = turn["assistant_message"]
    assert answer["status"] == "complete" and answer["content"] == "hello world"
    assert answer["output_tokens"] > 0 and answer["error"] is None
    cid = turn["conversation"]["id"]
    # the same client_id again: what exists, nothing new
    again = http.post("/api/v1/conversations/send/", json={"content": "/echo hello world", "client_id": client_id}, headers=h)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["assistant_message"]["id"] == answer["id"]
    # a second turn in the same conversation; messages come oldest first
    second = http.post(f"/api/v1/conversations/{cid}/messages/", json={"content": "/echo second"}, headers=h)
    assert second.status_code == 201
    page = http.get(f"/api/v1/conversations/{cid}/messages/", headers=h).json()
    assert page["count"] == 4
    assert [m["position"] for m in page["results"]] == [1, 2, 3, 4]
    assert [m["role"] for m in page["results"]] == ["user", "assistant", "user", "assistant"]
    one = http.get(f"/api/v1/messages/{answer['id']}/", headers=h)
    assert one.status_code == 200 and one.json()["content"] == "hello world"


def test_regenerate_replaces_the_last_answer(http, key_a):
    h = bearer(key_a)
    turn = http.post("/api/v1/conversations/send/", json={"content": "/echo first"}, headers=h).json()
    cid, old = turn["conversation"]["id"], turn["assistant_message"]["id"]
    regenerated = http.post(f"/api/v1/conversations/{cid}/regenerate/", json={}, headers=h)
    assert regenerated.status_code == 201
    body = regenerated.json()
    assert body["user_message"] is None
    assert body["assistant_message"]["id"] != old and body["assistant_message"]["status"] == "complete"
    assert Message.objects.get(id=old).superseded is True
    visible = http.get(f"/api/v1/conversations/{cid}/messages/", headers=h).json()["results"]
    assert [m["id"] for m in visible][-1] == body["assistant_message"]["id"] and len(visible) == 2


def test_busy_while_an_answer_streams(parley_server, key_a, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    h = bearer(key_a)
    started = threading.Event()
    state: dict = {}

    def stream() -> None:
        with httpx.Client(base_url=parley_server.url, timeout=30) as client:
            with client.stream("POST", "/api/v1/conversations/send/", json={"content": "/long", "stream": True}, headers=h) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        frame = json.loads(line[6:])
                        if frame["type"] == "generation.started":
                            state["conversation"] = frame["message"]["conversation"]
                            state["message"] = frame["message"]["id"]
                            started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(15)
    with httpx.Client(base_url=parley_server.url, timeout=30) as client:
        busy = client.post(f"/api/v1/conversations/{state['conversation']}/messages/", json={"content": "hi"}, headers=h)
        assert busy.status_code == 409 and error_of(busy)["code"] == "busy"
        deleting = client.delete(f"/api/v1/conversations/{state['conversation']}/", headers=h)
        assert deleting.status_code == 409
        assert client.post(f"/api/v1/messages/{state['message']}/stop/", headers=h).json()["status"] == "cancelled"
    thread.join(30)


def test_error_shapes(http, key_a, org_a, tier_factory):
    h = bearer(key_a)
    anonymous = http.get("/api/v1/conversations/")
    assert anonymous.status_code == 401 and error_of(anonymous)["code"] == "unauthenticated"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = http.get("/api/v1/conversations/", headers=bearer("pk_wrong"))
    assert wrong.status_code == 401 and error_of(wrong)["code"] == "unauthenticated"
    bad_json = http.post("/api/v1/conversations/", content=b"{oops", headers={**h, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and error_of(bad_json)["code"] == "invalid_input"
    invalid = http.post("/api/v1/conversations/send/", json={"content": 42, "stream": "sometimes"}, headers=h)
    assert invalid.status_code == 400
    error = error_of(invalid)
    assert error["code"] == "invalid_input" and "stream" in error["fields"]
    empty = http.post("/api/v1/conversations/send/", json={"content": "   "}, headers=h)
    assert empty.status_code == 422 and error_of(empty)["code"] == "invalid_input"
    assert http.get(f"/api/v1/conversations/{uuid.uuid4()}/", headers=h).status_code == 404
    not_allowed = http.put("/api/v1/conversations/", json={}, headers=h)
    assert not_allowed.status_code == 405 and error_of(not_allowed)["code"] == "method_not_allowed"
    unknown_model = http.post("/api/v1/conversations/send/", json={"content": "hi", "model": "nope"}, headers=h)
    assert unknown_model.status_code == 403 and error_of(unknown_model)["code"] == "model_not_allowed"

    tier_factory("pro", max_message_chars=10, requests_per_minute=2)
    too_long = http.post("/api/v1/conversations/send/", json={"content": "x" * 50}, headers=h)
    assert too_long.status_code == 413 and error_of(too_long)["code"] == "message_too_long"
    assert http.post("/api/v1/conversations/send/", json={"content": "/echo a"}, headers=h).status_code == 201
    http.post("/api/v1/conversations/send/", json={"content": "/echo b"}, headers=h)
    limited = http.post("/api/v1/conversations/send/", json={"content": "/echo c"}, headers=h)
    assert limited.status_code == 429
    error = error_of(limited)
    assert error["code"] == "rate_limited" and error["retry_after"] >= 1
    assert int(limited.headers["Retry-After"]) == error["retry_after"]


def test_session_auth_needs_csrf(http, org_a):
    client = Client()
    client.force_login(org_a.member.user)
    http.cookies.set("sessionid", client.cookies["sessionid"].value)
    assert http.get("/api/v1/conversations/").status_code == 200
    refused = http.post("/api/v1/conversations/", json={"title": "x"})
    assert refused.status_code == 403 and error_of(refused)["code"] == "permission_denied"
    token = "b" * 32
    http.cookies.set("csrftoken", token)
    accepted = http.post("/api/v1/conversations/", json={"title": "x"}, headers={"X-CSRFToken": token})
    assert accepted.status_code == 201


def test_models_usage_and_ledger(http, org_a, api_key_factory):
    member_key = api_key_factory(org_a.member)[1]
    admin_key = api_key_factory(org_a.admin)[1]
    models = http.get("/api/v1/models/", headers=bearer(member_key)).json()
    demo = next(m for m in models if m["alias"] == "demo")
    assert demo["provider"] == "demo" and demo["context_window"] > 0 and "price" in demo
    assert all(m["alias"] in org_a.organization.tier.allowed_models for m in models)

    http.post("/api/v1/conversations/send/", json={"content": "/echo billed"}, headers=bearer(member_key))
    http.post("/api/v1/conversations/send/", json={"content": "/echo by admin"}, headers=bearer(admin_key))
    deadline = time.monotonic() + 10
    while LedgerEntry.objects.filter(organization=org_a.organization).count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    usage = http.get("/api/v1/usage/", headers=bearer(member_key)).json()
    assert usage["scope"] == "member" and usage["calls"] == 1
    assert usage["budgets"][0]["scope"] == "organization" and usage["budgets"][0]["level"] == "ok"
    assert http.get("/api/v1/usage/", headers=bearer(admin_key)).json()["calls"] == 2
    mine = http.get("/api/v1/usage/ledger/", headers=bearer(member_key)).json()
    assert len(mine["results"]) == 1 and mine["results"][0]["model"] == "demo"
    everyone = http.get("/api/v1/usage/ledger/", headers=bearer(admin_key)).json()
    assert len(everyone["results"]) == 2 and everyone["next_offset"] is None
    paged = http.get("/api/v1/usage/ledger/", params={"limit": 1}, headers=bearer(admin_key)).json()
    assert len(paged["results"]) == 1 and paged["next_offset"] == 1
    bad = http.get("/api/v1/usage/ledger/", params={"start": "2026-05-01", "end": "2026-04-01"}, headers=bearer(admin_key))
    assert bad.status_code == 400


def test_organization_roles_and_keys(http, org_a, api_key_factory):
    member = bearer(api_key_factory(org_a.member)[1])
    admin = bearer(api_key_factory(org_a.admin)[1])
    organization = http.get("/api/v1/organization/", headers=member).json()
    assert organization["id"] == str(org_a.organization.id) and organization["role"] == "member"
    assert http.patch("/api/v1/organization/", json={"name": "Acme 2"}, headers=member).status_code == 403
    assert http.patch("/api/v1/organization/", json={"name": "Acme 2"}, headers=admin).json()["name"] == "Acme 2"
    members = http.get("/api/v1/organization/members/", headers=member).json()["results"]
    assert sorted(m["role"] for m in members) == ["admin", "member", "owner"]
    denied = http.get("/api/v1/organization/invitations/", headers=member)
    assert denied.status_code == 403 and error_of(denied)["code"] == "permission_denied"
    invited = http.post("/api/v1/organization/invitations/", json={"email": "new@example.com"}, headers=admin)
    assert invited.status_code == 201 and "token" not in invited.json()
    assert [i["email"] for i in http.get("/api/v1/organization/invitations/", headers=admin).json()["results"]] == ["new@example.com"]
    assert http.delete(f"/api/v1/organization/invitations/{invited.json()['id']}/", headers=member).status_code == 403
    assert http.delete(f"/api/v1/organization/invitations/{invited.json()['id']}/", headers=admin).status_code == 204
    assert http.patch(f"/api/v1/organization/members/{org_a.member.id}/", json={"role": "admin"}, headers=member).status_code == 403
    promoted = http.patch(f"/api/v1/organization/members/{org_a.member.id}/", json={"role": "admin"}, headers=admin)
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    # API keys: the secret once, then only its prefix
    created = http.post("/api/v1/api-keys/", json={"name": "ci"}, headers=member)
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("pk_") and created.json()["prefix"] == secret[:10]
    listed = http.get("/api/v1/api-keys/", headers=member).text
    assert secret not in listed and created.json()["id"] in listed
    assert http.get("/api/v1/models/", headers=bearer(secret)).status_code == 200
    revoked = http.delete(f"/api/v1/api-keys/{created.json()['id']}/", headers=member)
    assert revoked.status_code == 200 and revoked.json()["is_active"] is False
    assert http.get("/api/v1/models/", headers=bearer(secret)).status_code == 401
