"""The OpenAI contract of /v1/, honoured or refused: the official `openai` SDK over a real socket.

Each OpenAI parameter either reaches the provider with OpenAI's meaning (the fake provider records
what it got) or is refused with a 400 that names it; an answer that fails after it began is an
error the SDK raises, and is billed; every malformed body is a 400/413 OpenAI error object; the
answer names the model that answered.
"""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest

from billing.models import LedgerEntry
from llm.tokens import count_text
from tests.api.conftest import bearer
from tests.api.test_openai_sdk import settled
from tests.fakeprovider.script import quota_exceeded, reply, stream_error

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MODEL = "gpt-5.2-instant"  # OpenAI provider: Parley calls the fake provider's OpenAI endpoint
ANTHROPIC = "claude-haiku-4-5"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(parley_server, key_a) -> openai.OpenAI:
    return openai.OpenAI(base_url=parley_server.url + "/v1", api_key=key_a, max_retries=0, timeout=30)


def _error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


# --- an answer that fails after it began ------------------------------------------------------------


def test_non_streamed_answer_failing_midway_is_an_error_the_sdk_raises_and_is_billed(client, fake_provider, org_a):
    fake_provider.openai.script(stream_error("server", after=3))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=HI)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "provider_error" and caught.value.body["type"] == "api_error"
    assert len(fake_provider.openai.requests) == 1  # output had begun: no retry, no fallback
    [row] = settled(org_a.organization, 1)
    # billed for what was generated (the provider reported no usage: Parley counted the partial text)
    assert row.output_tokens == count_text("part0 part1 part2 ", MODEL)
    assert row.input_tokens > 0 and row.cost > 0


def test_streamed_answer_failing_midway_raises_in_the_sdk_and_is_billed(client, fake_provider, org_a):
    fake_provider.openai.script(stream_error("server", after=3))
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            chunks.append(chunk)
    assert caught.value.body["code"] == "provider_error"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "part0 part1 part2 "
    assert not [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks)
    [row] = settled(org_a.organization, 1)
    assert row.output_tokens == count_text("part0 part1 part2 ", MODEL) and row.cost > 0


def test_failure_before_any_output_keeps_its_status(client, fake_provider):
    fake_provider.openai.script([quota_exceeded()])
    fake_provider.anthropic.script([quota_exceeded()])
    fake_provider.gemini.script([quota_exceeded()])
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    assert caught.value.status_code == 502 and caught.value.body["code"] == "provider_error"


# --- the model that answered ------------------------------------------------------------------------


def test_the_answer_names_the_fallback_that_answered(client, fake_provider, tier_factory):
    tier_factory("pro", allowed_models=[MODEL, ANTHROPIC])
    fake_provider.openai.script([quota_exceeded(), quota_exceeded()])
    fake_provider.anthropic.script([reply("From ", "Claude.", usage=(9, 2)), reply("Again.", usage=(9, 1))])
    completion = client.chat.completions.create(model=MODEL, messages=HI)
    assert completion.choices[0].message.content == "From Claude."
    assert completion.model == ANTHROPIC
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Again."
    assert chunks[-1].model == ANTHROPIC  # the last chunk (finish_reason) names who answered


def test_finish_reason_comes_from_the_provider(client, fake_provider):
    fake_provider.openai.script([reply("cut", finish="length"), reply("cut", finish="length")])
    assert client.chat.completions.create(model=MODEL, messages=HI).choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


# --- parameters: forwarded with OpenAI's meaning -------------------------------------------------------


def test_sampling_parameters_reach_the_provider(client, fake_provider):
    client.chat.completions.create(
        model=MODEL,
        messages=HI,
        stop=["END", "STOP"],
        seed=7,
        top_p=0.5,
        user="end-user-1",
        presence_penalty=0.25,
        frequency_penalty=-0.5,
    )
    sent = fake_provider.openai.last_request.body
    assert sent["stop"] == ["END", "STOP"]
    assert (sent["seed"], sent["top_p"], sent["user"]) == (7, 0.5, "end-user-1")
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.25, -0.5)
    client.chat.completions.create(model=MODEL, messages=HI, stop="END")
    assert fake_provider.openai.last_request.body["stop"] == ["END"]


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                "strict": True,
            },
        },
    ],
)
def test_response_format_reaches_the_provider(client, fake_provider, response_format):
    fake_provider.openai.script(reply('{"a": "b"}'))
    completion = client.chat.completions.create(model=MODEL, messages=HI, response_format=response_format)
    assert json.loads(completion.choices[0].message.content) == {"a": "b"}
    assert fake_provider.openai.last_request.body["response_format"] == response_format


def test_response_format_a_model_cannot_honour_is_refused_naming_it(client, fake_provider):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ANTHROPIC, messages=HI, response_format={"type": "json_object"})
    assert caught.value.body["code"] == "unsupported_parameter" and caught.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ANTHROPIC, messages=HI, seed=1)
    assert caught.value.body["param"] == "seed"
    assert not fake_provider.anthropic.requests


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize(
    ("tool_choice", "sent"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "function": {"name": "lookup"}}, {"type": "function", "function": {"name": "lookup"}}),
    ],
)
def test_every_tool_choice_reaches_the_provider(client, fake_provider, tool_choice, sent):
    client.chat.completions.create(
        model=MODEL, messages=HI, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False
    )
    body = fake_provider.openai.last_request.body
    assert body["tool_choice"] == sent
    assert body["parallel_tool_calls"] is False


# --- parameters: refused, naming the parameter ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
         "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
         "messages[0].content[0]"),
    ],
)  # fmt: skip
def test_parameters_parley_cannot_honour_are_refused_naming_them(client, fake_provider, extra, param):
    body = {"model": MODEL, "messages": HI, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.body["code"] == "unsupported_parameter"
    assert caught.value.body["param"] == param
    assert not fake_provider.openai.requests


def test_parameters_at_their_default_are_accepted(client, fake_provider):
    completion = client.chat.completions.create(
        model=MODEL, messages=HI, logprobs=False, n=1, store=False, logit_bias={}, modalities=["text"]
    )
    assert completion.choices[0].logprobs is None
    assert "logprobs" not in fake_provider.openai.last_request.body


def test_an_unknown_parameter_is_refused_as_openai_refuses_it(client, fake_provider):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HI, extra_body={"max_token": 5})
    assert caught.value.body["code"] == "unknown_parameter" and caught.value.body["param"] == "max_token"
    assert not fake_provider.openai.requests


# --- bodies of any shape: an OpenAI error object, never a 500 or HTML -----------------------------------


def test_a_field_of_the_wrong_type_is_a_400_naming_it(http, key_a):
    cases = [
        ({"model": "demo", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"model": "demo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "demo", "messages": HI, "max_tokens": "5"}, "max_tokens"),
        ({"model": "demo", "messages": HI, "stream": "yes"}, "stream"),
        ({"model": ["demo"], "messages": HI}, "model"),
        ({"model": "demo", "messages": {"role": "user"}}, "messages"),
        ({"model": "demo", "messages": HI, "temperature": 9}, "temperature"),
    ]
    for body, param in cases:
        response = http.post("/v1/chat/completions", json=body, headers=bearer(key_a))
        assert response.status_code == 400, body
        error = _error(response)
        assert error["type"] == "invalid_request_error" and error["param"] == param, (body, error)


def test_deep_nesting_is_a_400(http, key_a):
    deep = b'{"model": "demo", "messages": [{"role": "user", "content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    response = http.post("/v1/chat/completions", content=deep, headers=bearer(key_a))
    assert response.status_code == 400 and _error(response)["code"] == "invalid_json"
    response = http.post("/v1/chat/completions", content=b"[" * 100_000, headers=bearer(key_a))
    assert response.status_code == 400 and _error(response)["code"] == "invalid_json"


@pytest.mark.parametrize("conversation", [None, "new"])
def test_a_lone_surrogate_is_a_400(http, key_a, conversation):
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "bad \\ud800 text"}]}'
    headers = {**bearer(key_a), **({"X-Parley-Conversation": conversation} if conversation else {})}
    response = http.post("/v1/chat/completions", content=body, headers=headers)
    assert response.status_code == 400 and _error(response)["code"] == "invalid_json"


def test_non_utf8_bytes_are_a_400(http, key_a):
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    response = http.post("/v1/chat/completions", content=body, headers=bearer(key_a))
    assert response.status_code == 400 and _error(response)["code"] == "invalid_json"


def test_a_body_over_django_s_2_5_mb_is_read_and_answered_in_json(http, key_a, fake_provider):
    # 3 MB: over DATA_UPLOAD_MAX_MEMORY_SIZE, under /v1's own limit: validated, then refused by the plan
    content = "word " * 600_000
    response = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": content}]},
        headers=bearer(key_a),
    )  # fmt: skip
    assert response.status_code == 400
    assert _error(response)["code"] in ("message_too_long", "context_length_exceeded")
    assert not fake_provider.openai.requests


def test_a_body_over_the_limit_is_a_413_that_states_the_limit(http, key_a):
    content = "x" * (4 * 1024 * 1024 + 10)
    response = http.post(
        "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": content}]},
        headers=bearer(key_a),
    )  # fmt: skip
    assert response.status_code == 413
    error = _error(response)
    assert error["code"] == "payload_too_large" and str(4 * 1024 * 1024) in error["message"]


def test_a_bad_key_is_a_401_whatever_the_body(parley_server):
    with httpx.Client(base_url=parley_server.url, timeout=30) as http:
        response = http.post("/v1/chat/completions", content=b"[[[", headers=bearer("pk_wrong"))
    assert response.status_code == 401 and _error(response)["code"] == "invalid_api_key"


def test_unknown_v1_paths_answer_json_404(http, key_a, client):
    for method, path in [("GET", "/v1/nope"), ("POST", "/v1/embeddings"), ("GET", "/v1/chat/completions/x")]:
        response = http.request(method, path, headers=bearer(key_a))
        assert response.status_code == 404, path
        assert _error(response)["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="demo", input="hi")


def test_conversation_mode_refuses_parameters_it_cannot_honour(client, org_a):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "/echo x"}], temperature=0.2,
            extra_headers={"X-Parley-Conversation": "new"},
        )  # fmt: skip
    assert caught.value.body["code"] == "unsupported_parameter" and caught.value.body["param"] == "temperature"
    assert not LedgerEntry.objects.exists()


def test_every_parameter_is_described_in_the_openapi_schema_and_in_the_docs():
    from pathlib import Path

    from conversations.openai.openapi import REQUEST_SCHEMA
    from conversations.openai.schemas import PARAMETERS

    assert set(REQUEST_SCHEMA["properties"]) == set(PARAMETERS)
    docs = Path(__file__).resolve().parents[2].joinpath("docs", "api.md").read_text()
    assert [name for name in PARAMETERS if f"`{name}`" not in docs] == []


def test_a_conversation_answer_failing_midway_is_an_error_the_sdk_raises(client, org_a):
    from conversations.models import Message

    new = {"X-Parley-Conversation": "new"}
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "/fail"}], extra_headers=new)
    assert caught.value.status_code == 502 and caught.value.body["code"] == "provider_error"
    conversation_id = caught.value.response.headers["X-Parley-Conversation"]
    answer = Message.objects.get(conversation_id=conversation_id, role="assistant")
    assert answer.status == "failed" and answer.content  # the partial text is kept, and billed
    assert LedgerEntry.objects.filter(message_id=answer.id).count() == 1
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "/fail"}], stream=True,
        extra_headers={"X-Parley-Conversation": conversation_id},
    )  # fmt: skip
    chunks = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            chunks.append(chunk)
    assert caught.value.body["code"] == "provider_error"
    assert not [c for c in chunks if c.choices and c.choices[0].finish_reason]
