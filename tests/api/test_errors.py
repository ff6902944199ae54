"""One error family and one table (config/errors.py), and JSON answers everywhere under /api/ and /v1/.

One test per defect of issue 10 that this covers: HTML 404s for unknown paths and malformed ids,
an oversized body, deep nesting, non-UTF-8 bytes and lone surrogates, wrong field types, Django's
own 400/500 pages, the admin's editable message content, unpriced models offered. (EMAIL_URL:
tests/accounts/test_production_settings.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.test import Client

from accounts.content_access import content_access_request
from accounts.errors import InvalidInput, NotFound
from billing.errors import BudgetExceeded, MessageTooLong, ModelNotAllowed, RateLimitExceeded
from billing.models import Price
from config import errors
from config.errors import (
    ERRORS,
    ParleyError,
    error_from_llm,
    json_loads_strict,
    openai_error_parts,
    rest_error_parts,
    retry_after_seconds,
    ws_error_frame,
)
from conversations.errors import Busy, FrameTooLarge
from conversations.models import Conversation, Message
from llm import errors as llm_errors
from tests.api.conftest import bearer

ROOT = Path(__file__).resolve().parents[2]


def rest_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    assert {"code", "message", "retry_after"} <= set(body["error"]), body
    return body["error"]


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    return body["error"]


@pytest.fixture
def api(db, org_a, api_key_factory) -> Client:
    """A Django test client with the owner's API key (500s are answers, not raised exceptions)."""
    secret = api_key_factory(org_a.owner)[1]
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}", raise_request_exception=False)


# --- the table ---------------------------------------------------------------------------------


def test_the_table_has_every_code_and_docs_list_them_as_the_table_says():
    wanted = {
        "invalid_input", "unauthenticated", "permission_denied", "not_found", "method_not_allowed", "busy",
        "frame_too_large", "payload_too_large", "message_too_long", "context_length_exceeded", "model_not_allowed",
        "unsupported_parameter", "rate_limited", "budget_exceeded", "provider_error", "provider_timeout",
        "provider_rate_limited", "interrupted", "internal_error", "service_unavailable",
    }  # fmt: skip
    assert wanted <= set(ERRORS)
    docs = (ROOT / "docs" / "errors.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)` \|.*$", docs, re.MULTILINE)}
    assert set(rows) == set(ERRORS)
    for code, row in ERRORS.items():
        cells = [cell.strip() for cell in rows[code].strip("|").split("|")]
        assert cells[1].startswith(str(row.status)), (code, cells[1])
        assert cells[2].startswith(f"{row.openai_status} `{row.openai_type}`"), (code, cells[2])
        assert (f"`{row.openai_code}`" if row.openai_code else "null") in cells[2], (code, cells[2])
        assert cells[3] == f"`{row.ws_code}`", (code, cells[3])
    readme = (ROOT / "README.md").read_text()
    assert "docs/errors.md" in readme


def test_every_error_class_of_the_apps_has_a_row():
    classes = [NotFound, InvalidInput, ModelNotAllowed, MessageTooLong, RateLimitExceeded, BudgetExceeded, Busy,
               FrameTooLarge]  # fmt: skip
    for cls in classes:
        assert cls.code in ERRORS, cls
        assert issubclass(cls, ParleyError)
    import accounts.errors

    assert accounts.errors.ParleyError is errors.ParleyError


def test_parley_error_carries_code_message_retry_after_and_param():
    error = ParleyError("Nope.", code="unsupported_parameter", retry_after=2.5, param="logprobs")
    assert (error.code, error.message, error.retry_after, error.param) == ("unsupported_parameter", "Nope.", 2.5, "logprobs")
    assert str(error) == "Nope."
    assert BudgetExceeded().message == "The monthly budget is used up."
    assert BudgetExceeded().code == "budget_exceeded" and BudgetExceeded().param is None


def test_retry_after_is_rounded_once_up_to_whole_seconds_at_least_one():
    assert retry_after_seconds(None) is None
    assert retry_after_seconds(0) == 1
    assert retry_after_seconds(0.01) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2
    assert retry_after_seconds(59.99) == 60
    assert retry_after_seconds(float("nan")) is None


def test_rest_parts():
    status, body, headers = rest_error_parts(RateLimitExceeded(retry_after=4.2))
    assert status == 429 and headers == {"Retry-After": "5"}
    assert body == {"error": {"code": "rate_limited", "message": "Too many requests; try again shortly.", "retry_after": 5}}
    status, body, headers = rest_error_parts(BudgetExceeded())
    assert status == 429 and headers == {} and body["error"]["retry_after"] is None
    assert rest_error_parts(ParleyError("x", code="unauthenticated"))[2]["WWW-Authenticate"].startswith("Bearer")
    assert rest_error_parts(MessageTooLong())[0] == 413
    assert rest_error_parts(Busy())[0] == 409
    assert rest_error_parts(ParleyError("x", code="provider_timeout"))[0] == 504
    # A code of a subclass's own answers with its class's row.
    status, body, _ = rest_error_parts(InvalidInput("Used.", code="invitation_used"))
    assert status == 422 and body["error"]["code"] == "invitation_used"


def test_openai_parts_as_openai_answers():
    status, body, headers = openai_error_parts(ParleyError("Bad key.", code="unauthenticated"))
    assert status == 401 and body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = openai_error_parts(ModelNotAllowed())
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    status, body, headers = openai_error_parts(RateLimitExceeded(retry_after=0.3))
    assert (status, body["error"]["type"], body["error"]["code"], headers) == (
        429, "requests", "rate_limit_exceeded", {"Retry-After": "1"}
    )  # fmt: skip
    status, body, _ = openai_error_parts(BudgetExceeded())
    assert status == 429 and body["error"]["type"] == "insufficient_quota"
    status, body, _ = openai_error_parts(ParleyError("Too long.", code="context_length_exceeded"))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded" and body["error"]["param"] == "messages"
    assert openai_error_parts(ParleyError("x", code="provider_error"))[:2][0] == 502
    status, body, _ = openai_error_parts(ParleyError("x", code="provider_timeout"))
    assert status == 504 and body["error"]["type"] == "api_error"
    assert openai_error_parts(ParleyError("x", code="payload_too_large"))[0] == 413
    status, body, _ = openai_error_parts(ParleyError("No logprobs.", code="unsupported_parameter", param="logprobs"))
    assert status == 400 and body["error"]["param"] == "logprobs" and body["error"]["code"] == "unsupported_parameter"


def test_ws_error_frame_is_protocols_error_frame():
    frame = ws_error_frame(RateLimitExceeded(retry_after=1.5), client_id="c-1")
    assert frame == {
        "type": "error",
        "code": "rate_limited",
        "message": "Too many requests; try again shortly.",
        "retry_after": 2,
        "client_id": "c-1",
    }
    assert "client_id" not in ws_error_frame(Busy())
    assert ws_error_frame(ParleyError("x", code="payload_too_large"))["code"] == "frame_too_large"


def test_provider_errors_are_translated_once_without_their_text():
    secret = "sk-live-abcdef0123456789"
    cases = [
        (llm_errors.ModelUnavailable(secret, provider="openai"), "model_not_allowed"),
        (llm_errors.ContextTooLong(secret, provider="openai"), "context_length_exceeded"),
        (llm_errors.InvalidRequest(secret, provider="anthropic"), "invalid_input"),
        (llm_errors.RateLimited(secret, provider="openai", retry_after=2.2), "provider_rate_limited"),
        (llm_errors.Timeout(secret, provider="gemini"), "provider_timeout"),
        (llm_errors.ProviderUnavailable(secret, provider="openai"), "provider_error"),
        (llm_errors.AuthFailed(secret, provider="openai"), "provider_error"),
        (llm_errors.QuotaExceeded(secret, provider="openai"), "provider_error"),
    ]
    for exc, code in cases:
        error = error_from_llm(exc)
        assert isinstance(error, ParleyError) and error.code == code, (exc, error.code)
        assert secret not in error.message
    assert error_from_llm(llm_errors.RateLimited(provider="openai", retry_after=2.2)).retry_after == 2.2
    assert error_from_llm(llm_errors.RateLimited(provider="openai")).retry_after == 1


def test_strict_json():
    assert json_loads_strict(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for raw in [b"{oops", b'{"a": "\xff"}', b"[" * 100_000 + b"]" * 100_000, b"[" * 65 + b"]" * 65,
                b'{"a": "\\ud800"}', b'{"a": NaN}', b'{"a": 1e999}', b"1" * 5000]:  # fmt: skip
        with pytest.raises(errors.InvalidBody):
            json_loads_strict(raw)
    assert json_loads_strict(b"[" * 64 + b"]" * 64) is not None


# --- JSON everywhere under /api/ and /v1/ --------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/", "/api", "/api/v1/", "/api/v1/nothing-here/", "/api/v2/conversations/", "/api/v1/models"],
)
def test_unknown_api_paths_answer_json_404(api, path):
    error = rest_error(api.get(path), 404)
    assert error["code"] == "not_found"


def test_a_missing_slash_is_named():
    error = rest_error(Client().get("/api/v1/models"), 404)
    assert "/api/v1/models/" in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/conversations/not-a-uuid/"),
        ("patch", "/api/v1/conversations/123/"),
        ("delete", "/api/v1/conversations/not-a-uuid/"),
        ("get", "/api/v1/conversations/not-a-uuid/messages/"),
        ("post", "/api/v1/conversations/not-a-uuid/regenerate/"),
        ("get", "/api/v1/messages/%00/"),
        ("post", "/api/v1/messages/x/stop/"),
        ("delete", "/api/v1/api-keys/nope/"),
        ("patch", "/api/v1/organization/members/1/"),
        ("delete", "/api/v1/organization/invitations/zzz/"),
    ],
)
def test_malformed_ids_in_paths_answer_json_404(api, method, path):
    response = api.generic(method.upper(), path, "{}", content_type="application/json")
    assert rest_error(response, 404)["code"] == "not_found"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_unknown_v1_paths_answer_openai_json_404(http, key_a):
    for method, path in [("GET", "/v1/embeddings"), ("POST", "/v1/completions"), ("GET", "/v1/"),
                         ("POST", "/v1/chat/completions/extra"), ("GET", "/v1/assistants/asst_1")]:  # fmt: skip
        response = http.request(method, path, headers=bearer(key_a), json={})
        error = openai_error(response, 404)
        assert error["type"] == "invalid_request_error" and path in error["message"]


def test_django_400_and_500_are_json_under_the_api_prefixes(api, monkeypatch):
    # A host Django refuses (SuspiciousOperation → handler400).
    assert rest_error(api.get("/api/v1/models/", HTTP_HOST="evil.example"), 400)["code"] == "invalid_input"
    assert api.get("/v1/models", HTTP_HOST="evil.example").json()["error"]["type"] == "invalid_request_error"
    assert api.get("/dashboard/", HTTP_HOST="evil.example")["Content-Type"].startswith("text/html")

    # A bug in a view (handler500): the error shape, not Django's HTML page.
    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("conversations.api.conversations_page_for_member", broken)
    error = rest_error(api.get("/api/v1/conversations/"), 500)
    assert error["code"] == "internal_error" and "a bug" not in error["message"]


def test_other_pages_keep_html_404(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


# --- bodies -------------------------------------------------------------------------------------------

WRITE_ENDPOINTS = [
    ("post", "/api/v1/conversations/"),
    ("post", "/api/v1/conversations/send/"),
    ("patch", "/api/v1/organization/"),
    ("post", "/api/v1/organization/invitations/"),
    ("post", "/api/v1/api-keys/"),
]


def test_an_oversized_body_is_413_stating_the_limit(api, settings):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert limit == 4 * 1024 * 1024  # the limit docs/errors.md documents
    body = json.dumps({"title": "x" * (limit + 10)})
    error = rest_error(api.post("/api/v1/conversations/", data=body, content_type="application/json"), 413)
    assert error["code"] == "payload_too_large" and str(limit) in error["message"]


@pytest.mark.parametrize(("method", "path"), WRITE_ENDPOINTS)
def test_deeply_nested_bodies_are_400(api, method, path):
    for depth in (100_000, 100):
        body = "[" * depth + "]" * depth
        response = getattr(api, method)(path, data=body, content_type="application/json")
        assert rest_error(response, 400)["code"] == "invalid_input"
    body = '{"content": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert rest_error(getattr(api, method)(path, data=body, content_type="application/json"), 400)


@pytest.mark.parametrize(("method", "path"), WRITE_ENDPOINTS)
def test_non_utf8_bodies_and_lone_surrogates_are_400(api, method, path):
    for body in [b'{"content": "caf\xe9", "title": "caf\xe9", "name": "\xff"}', b"\xff\xfe{\x00}\x00",
                 b'{"content": "\\ud800", "title": "\\udfff", "name": "\\ud83d", "email": "\\ud800@x.org"}']:  # fmt: skip
        response = getattr(api, method)(path, data=body, content_type="application/json")
        assert rest_error(response, 400)["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/conversations/", {"title": ["x"], "model": {"a": 1}, "persona": 42}),
        ("post", "/api/v1/conversations/send/", {"content": ["hi"], "stream": "sometimes", "client_id": 7}),
        ("post", "/api/v1/conversations/send/", {"content": "hi", "model": ["demo"]}),
        ("post", "/api/v1/conversations/send/", ["content", "hi"]),
        ("post", "/api/v1/conversations/send/", "hi"),
        ("post", "/api/v1/conversations/send/", None),
        ("patch", "/api/v1/organization/", {"name": {"x": 1}}),
        ("post", "/api/v1/organization/invitations/", {"email": ["a@b.c"], "role": 3}),
        ("post", "/api/v1/api-keys/", {"name": 1.5, "expires_at": [2030]}),
    ],
)
def test_wrong_field_types_are_400_with_fields(api, method, path, body):
    response = getattr(api, method)(path, data=json.dumps(body), content_type="application/json")
    error = rest_error(response, 400)
    assert error["code"] == "invalid_input" and "fields" in error


def test_wrong_types_in_conversation_bodies_are_400(api, org_a):
    conversation = Conversation.objects.create(organization=org_a.organization, owner=org_a.owner.user, title="t")
    url = f"/api/v1/conversations/{conversation.id}/"
    for body in [{"archived": "maybe"}, {"title": 5}, {"model": None}, [1]]:
        response = api.patch(url, data=json.dumps(body), content_type="application/json")
        assert rest_error(response, 400)["code"] == "invalid_input", body
    for path in [url + "messages/", url + "regenerate/"]:
        response = api.post(path, data=json.dumps({"content": {"x": 1}, "stream": [], "model": 1}),
                            content_type="application/json")  # fmt: skip
        assert rest_error(response, 400)["code"] == "invalid_input"


def test_patch_needs_no_name(api, org_a):
    """A PATCH is partial: each field may be left out (the schema says so)."""
    membership = org_a.member
    response = api.patch(
        f"/api/v1/organization/members/{membership.id}/", data=json.dumps({}), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert api.patch("/api/v1/organization/", data="{}", content_type="application/json").status_code == 200


# --- the admin --------------------------------------------------------------------------------------


def test_staff_cannot_edit_message_content_in_the_admin(client, org_a, user_factory):
    conversation = Conversation.objects.create(organization=org_a.organization, owner=org_a.owner.user, title="t")
    message = Message.objects.create(
        conversation=conversation,
        organization=org_a.organization,
        position=1,
        role="assistant",
        content="The answer.",
        tool_events=[{"call": {"id": "c1", "name": "clock", "arguments": {}}, "result": "noon"}],
    )
    admin = user_factory(is_staff=True, is_superuser=True)
    client.force_login(admin)
    # Content shows only under a break-glass grant (docs/privacy.md); read-only even then.
    content_access_request(staff_user=admin, organization=org_a.organization, reason="Checking messages are read-only.")
    url = f"/admin/conversations/message/{message.id}/change/"
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "The answer." in html
    assert 'name="content"' not in html and 'name="tool_events"' not in html
    response = client.post(url, {"content": "Edited by staff.", "tool_events": "[]", "role": "assistant"})
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.content == "The answer." and message.tool_events[0]["result"] == "noon"
    assert client.get("/admin/conversations/message/add/").status_code == 403


# --- unpriced models are not offered -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_unpriced_models_are_not_offered(client, org_a, http, key_a):
    from conversations.views import models_for_member

    def rest_models() -> list[dict]:
        return http.get("/api/v1/models/", headers=bearer(key_a)).json()

    def openai_models() -> list[str]:
        return [row["id"] for row in http.get("/v1/models", headers=bearer(key_a)).json()["data"]]

    assert "demo" in [row["alias"] for row in rest_models()]
    assert all(row["price"] is not None for row in rest_models())
    assert "demo" in openai_models()

    Price.objects.filter(model="demo").delete()  # the price cache forgets it on delete

    assert "demo" not in [row["alias"] for row in rest_models()]
    assert "demo" not in openai_models()
    assert "demo" not in [info.alias for info in models_for_member(org_a.owner)]
    client.force_login(org_a.owner.user)
    page = client.get("/chat/")
    assert page.status_code == 200
    assert 'value="demo"' not in page.content.decode()

