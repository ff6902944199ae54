"""A property test of the REST API's write endpoints: whatever body a client sends, the answer is JSON
and never a 5xx.

Hypothesis posts generated bodies to a live Parley (the real ASGI app): random JSON of the wrong
types, bodies nested 60 to 200,000 levels deep, lone surrogates, huge strings, one body over the size
limit, bytes that are not UTF-8, and other content types, to each write endpoint (and to paths whose id
is not a UUID). Every answer must be JSON; an error must be the REST error object with a code from
docs/errors.md's table.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import ERRORS
from tests.api.conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MAX_EXAMPLES = 160
FIELDS = ["content", "title", "model", "persona", "archived", "stream", "client_id", "name", "email", "role",
          "expires_at"]  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)  # fmt: skip
# The endpoints' own field names with values of any type: mostly wrong, sometimes right.
field_bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)
surrogate_text = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4)


def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: surrogates travel as \ud800 escapes


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"content": ' * depth + b"1" + b"}" * depth
    return b'{"content": "hi", "model": ' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    field_bodies.map(_dumps),
    json_values.map(_dumps),
    st.tuples(st.integers(60, 200_000), st.sampled_from(["list", "dict", "field"])).map(lambda args: _nested(*args)),
    st.tuples(st.sampled_from(FIELDS), surrogate_text).map(lambda kv: _dumps({kv[0]: f"a{kv[1]}b", "content": kv[1]})),
    st.tuples(st.sampled_from(FIELDS), st.integers(1_000, 300_000)).map(lambda kv: _dumps({kv[0]: "x" * kv[1]})),
    st.just(b'{"content": "' + b"x" * (4 * 1024 * 1024 + 16) + b'"}'),
    st.binary(max_size=64),
    st.binary(min_size=1, max_size=16).map(lambda raw: b'{"content": "' + raw + b'\xff", "title": "\xc3"}'),
    st.sampled_from([b"", b"null", b"{", b'{"content": NaN}', b'{"title": 1e999}', b"1" * 5000, b'"\\ud800"']),
)
content_types = st.sampled_from(
    ["application/json"] * 6
    + ["application/json; charset=latin-1", "text/plain", "application/x-www-form-urlencoded",
       "multipart/form-data; boundary=zz", ""]
)  # fmt: skip


@pytest.fixture
def targets(http, org_a, api_key_factory) -> tuple[dict, list[tuple[str, str]]]:
    headers = bearer(api_key_factory(org_a.owner)[1])
    turn = http.post("/api/v1/conversations/send/", json={"content": "/echo hello"}, headers=headers)
    assert turn.status_code == 201, turn.text
    c, message, m = turn.json()["conversation"]["id"], turn.json()["assistant_message"]["id"], org_a.member.id
    endpoints = [
        ("POST", "/api/v1/conversations/"),
        ("POST", "/api/v1/conversations/send/"),
        ("PATCH", f"/api/v1/conversations/{c}/"),
        ("POST", f"/api/v1/conversations/{c}/messages/"),
        ("POST", f"/api/v1/conversations/{c}/regenerate/"),
        ("POST", f"/api/v1/messages/{message}/stop/"),
        ("PATCH", "/api/v1/organization/"),
        ("POST", "/api/v1/organization/invitations/"),
        ("PATCH", f"/api/v1/organization/members/{m}/"),
        ("POST", "/api/v1/api-keys/"),
        ("PATCH", "/api/v1/conversations/not-a-uuid/"),
        ("POST", "/api/v1/conversations/123/messages/"),
    ]
    return headers, endpoints


def test_write_endpoints_answer_json_and_never_5xx(http, targets):
    headers, endpoints = targets

    @given(endpoint=st.sampled_from(endpoints), body=bodies, content_type=content_types)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    def check(endpoint, body, content_type) -> None:
        method, path = endpoint
        request_headers = {**headers, "Content-Type": content_type} if content_type else headers
        response = http.request(method, path, content=body, headers=request_headers)
        assert response.status_code < 500, (response.status_code, response.text[:500])
        assert response.headers.get("content-type", "").startswith("application/json"), response.text[:300]
        answer = response.json()
        if response.status_code >= 400:
            assert set(answer) == {"error"}, answer
            code = answer["error"]["code"]
            assert code in ERRORS or code.startswith("invitation_"), answer
            assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]

    check()
