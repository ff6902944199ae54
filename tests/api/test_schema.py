"""The OpenAPI schema: valid, served, with docs; and Schemathesis over every operation against a live Parley.

Schemathesis runs as its CLI runs it (`st run`), with all its checks, all generation modes (valid
and invalid requests) and its examples, coverage and fuzzing phases, authenticated with an owner's
API key: no answer may be a 500, every answer must match the schema (status codes, content types,
bodies, headers), requests that break the schema must be refused, requests without credentials
too, and a schema-valid request must never get a 400 (400 means "does not match the schema").
Parley refuses some valid requests by rule (a model the plan lacks, a whitespace-only message,
an expiry in the past: 403, 422 …, docs/errors.md); those statuses are documented per operation
and listed as acceptable answers to valid data below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MAX_EXAMPLES = 10
# Answers a schema-valid request may get: success, or a refusal by rule that the operation documents.
VALID_DATA_STATUSES = ["2xx", "401", "403", "404", "409", "413", "422", "429"]
ST = Path(sys.executable).with_name("st")


def _openapi() -> dict:
    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


SCHEMA = schemathesis.openapi.from_dict(_openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def test_schema_is_served_and_documents_every_api_route(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in ("/api/v1/conversations/", "/api/v1/conversations/{conversation_id}/messages/", "/api/v1/models/",
                 "/api/v1/usage/", "/api/v1/api-keys/", "/api/v1/organization/members/"):  # fmt: skip
        assert path in paths
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "401" in responses and "404" in responses, f"{method} {path} documents no errors"
            assert any(code.startswith("2") for code in responses), f"{method} {path} documents no success"
    assert "apiKey" in schema["components"]["securitySchemes"]


def test_docs_page_works_offline(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html and "cdn.jsdelivr.net" not in html and "unpkg.com" not in html


@pytest.fixture
def owner_key(org_a, api_key_factory) -> str:
    conversation = Conversation.objects.create(organization=org_a.organization, owner=org_a.owner.user, title="seed")
    Message.objects.create(
        conversation=conversation, organization=org_a.organization, position=1, role="user", content="hello"
    )
    return api_key_factory(org_a.owner)[1]


def test_schemathesis(parley_server, owner_key, tmp_path):
    """Every operation in one live server (one database set-up); failures are reported together."""
    assert len(OPERATIONS) >= 20
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(_openapi()))
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[checks.positive_data_acceptance]\n"
        f"expected-statuses = {json.dumps(VALID_DATA_STATUSES)}\n"
        # The ledger's `end` must follow `start` by at most 366 days: the schema cannot say how two
        # parameters relate, so a pair of dates that breaks the rule is a 400 (it says so in `end`).
        "[[operations]]\n"
        'include-path = "/api/v1/usage/ledger/"\n'
        "[operations.checks.positive_data_acceptance]\n"
        f"expected-statuses = {json.dumps([*VALID_DATA_STATUSES, '400'])}\n"
        # OpenAI's contract refuses a valid parameter the model cannot honour with a 400 that names it
        # (`unsupported_parameter`, docs/api.md), as OpenAI does.
        "[[operations]]\n"
        'include-path = "/v1/chat/completions"\n'
        "[operations.checks.positive_data_acceptance]\n"
        f"expected-statuses = {json.dumps([*VALID_DATA_STATUSES, '400'])}\n"
    )
    command = [
        str(ST), "--config-file", str(config), "--no-color",
        "run", str(schema), "--url", parley_server.url, "--header", f"Authorization: Bearer {owner_key}",
        "--checks", "all", "--mode", "all", "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--workers", "1",
        "--generation-database", "none", "--request-timeout", "30",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    failures = output[output.find("FAILURES") :] if "FAILURES" in output else output
    assert result.returncode == 0, failures[-20000:]
