"""A property test: whatever body is posted to /v1/chat/completions (with a valid key), the answer is
never a 5xx and always OpenAI-shaped — a JSON object, or an SSE stream of JSON events.

Bodies come from hypothesis: arbitrary bytes, arbitrary JSON, objects of OpenAI's parameter names with
values of any type, and near-valid requests with one part replaced (deep nesting, surrogates and
NUL characters included).
"""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conversations.openai.schemas import PARAMETERS
from tests.api.conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MAX_EXAMPLES = 150

# every code point, lone surrogates included (json.dumps writes them as \ud800 escapes)
_text = st.text(alphabet=st.characters(exclude_categories=[]), max_size=30) | st.sampled_from(
    ["", "demo", "/echo hi", "\x00", "new", "auto", "none", "required", "function", "text", "json_object", "user"]
)
_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | _text
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "robot"])
_message = st.fixed_dictionaries(
    {"role": _roles | _json},
    optional={"content": _text | _json, "tool_calls": _json, "tool_call_id": _text, "name": _json},
)
_valid = {"model": "demo", "messages": [{"role": "user", "content": "/echo fuzz"}]}


def _encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


_bodies = st.one_of(
    st.binary(max_size=64),
    _json.map(_encode),
    # OpenAI's parameter names with values of any type
    st.dictionaries(st.sampled_from(PARAMETERS), _json, max_size=6).map(lambda extra: _encode({**_valid, **extra})),
    # a valid request with its messages replaced
    st.lists(_message, max_size=3).map(lambda messages: _encode({**_valid, "messages": messages})),
    # hand-made nasties
    st.sampled_from(
        [
            b'{"model": "demo", "messages": [{"role": "user", "content": "\\ud800"}]}',
            b'{"model": "demo", "messages": [{"role": "user", "content": "\\udfff x"}], "stream": true}',
            b'{"model": "demo", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            b'{"model": "demo", "messages": [{"role": "user", "content": "a\\u0000b"}], '
            b'"metadata": {"parley_conversation": "new"}}',
            b'{"model": "demo", "messages": [], "metadata": {"parley_conversation": "not-a-uuid"}}',
            b'{"model": "demo", "messages": [{"role": "user", "content": "/echo x"}], "max_tokens": 1e999}',
            b'{"model": "demo", "messages": [{"role": "user", "content": "/echo x"}], "seed": 99999999999999999999999}',
            b'{"model": "demo", "messages": [{"role": "user", "content": "/echo x"}], "temperature": NaN}',
            b"\xef\xbb\xbf{}",
        ]
    ),
)


def _assert_openai_shaped(response: httpx.Response, body: bytes) -> None:
    assert response.status_code < 500, (response.status_code, body[:300], response.text[:300])
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        assert response.status_code == 200
        events = [block for block in response.text.split("\n\n") if block.strip()]
        for event in events:
            assert event.startswith("data: "), event[:100]
            data = event[len("data: ") :]
            if data != "[DONE]":
                assert isinstance(json.loads(data), dict)
        return
    assert kind.startswith("application/json"), (response.status_code, kind, response.text[:200])
    data = response.json()
    assert isinstance(data, dict)
    if response.status_code >= 400:
        assert set(data["error"]) == {"message", "type", "code", "param"}


def test_no_body_gets_a_5xx_or_an_answer_that_is_not_openai_shaped(parley_server, key_a, tier_factory):
    tier_factory("pro", requests_per_minute=10_000)
    with httpx.Client(base_url=parley_server.url, timeout=30) as http:

        @given(body=_bodies)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        def run(body: bytes) -> None:
            response = http.post(
                "/v1/chat/completions",
                content=body,
                headers={**bearer(key_a), "Content-Type": "application/json"},
            )
            _assert_openai_shaped(response, body)

        run()
