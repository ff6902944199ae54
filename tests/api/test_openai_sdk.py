"""The official `openai` SDK pointed at a live Parley, which calls the fake provider (OpenAI wire format)."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import openai
import pytest

from billing.budgets import organization_budget_set
from billing.models import LedgerEntry, Reservation
from conversations.models import Conversation, Message
from llm.models import ProviderCall
from tests.fakeprovider.script import reply, tool_call

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MODEL = "gpt-5.2-instant"  # an OpenAI-provider alias: Parley calls the fake provider's OpenAI endpoint


def settled(organization, count: int, timeout: float = 10.0) -> list[LedgerEntry]:
    """The ledger rows once `count` are written and no reservation is open (settlement follows the answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(LedgerEntry.objects.filter(organization=organization))
        if len(rows) >= count and not Reservation.objects.filter(organization=organization, status="open").exists():
            return rows
        time.sleep(0.02)
    raise AssertionError(f"expected {count} ledger rows and no open reservation")


@pytest.fixture
def client(parley_server, key_a) -> openai.OpenAI:
    return openai.OpenAI(base_url=parley_server.url + "/v1", api_key=key_a, max_retries=0, timeout=30)


def test_completion(client, fake_provider, org_a):
    fake_provider.openai.script(reply("Hel", "lo ", "there", usage=(21, 3)))
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        max_tokens=50,
        temperature=0.2,
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (21, 3, 24)
    # the provider got the client's messages and limits
    sent = fake_provider.openai.last_request.body
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][-1]["content"] == "Say hello"
    assert sent.get("temperature") == 0.2
    # billed once, logged, and nothing stored as a conversation
    rows = settled(org_a.organization, 1)
    assert len(rows) == 1 and rows[0].input_tokens == 21 and rows[0].output_tokens == 3 and rows[0].cost > 0
    assert rows[0].api_key is not None
    assert ProviderCall.objects.filter(organization_id=org_a.organization.id).count() == 1
    assert not Conversation.objects.exists()
    assert not Reservation.objects.filter(status="open").exists()


def test_stream_with_usage(client, fake_provider, org_a):
    fake_provider.openai.script(reply("One", ", two", ", three.", usage=(12, 3)))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count"}],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=20,
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One, two, three."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # OpenAI's shape: the usage arrives in a last chunk with no choices
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 12
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    assert len(settled(org_a.organization, 1)) == 1


def test_stream_without_usage(client, fake_provider):
    fake_provider.openai.script(reply("a", "b"))
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ab"


def test_client_tools_round_trip(client, fake_provider, org_a):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    fake_provider.openai.script(
        [tool_call("get_weather", {"city": "Oslo"}, id="call_w1"), reply("It is sunny in Oslo.")]
    )
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id == "call_w1" and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    # the provider saw the client's tool definitions
    sent_tools = fake_provider.openai.last_request.body["tools"]
    assert sent_tools[0]["function"]["name"] == "get_weather"

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_w1", "content": json.dumps({"sky": "sunny"})},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    assert second.choices[0].message.content == "It is sunny in Oslo."
    sent = fake_provider.openai.last_request.body["messages"]
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "call_w1"
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert len(settled(org_a.organization, 2)) == 2


def test_streamed_tool_call(client, fake_provider):
    fake_provider.openai.script(tool_call("lookup", {"q": "parley"}, id="call_s1"))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "look it up"}], tools=tools, stream=True
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "call_s1" and calls[0].function.name == "lookup"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"q": "parley"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_wrong_key_is_authentication_error(parley_server):
    bad = openai.OpenAI(base_url=parley_server.url + "/v1", api_key="pk_not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_revoked_key_is_authentication_error(parley_server, org_a, api_key_factory):
    from accounts.services import api_key_revoke

    key, secret = api_key_factory(org_a.member)
    api_key_revoke(membership=org_a.member, key_id=key.id)
    revoked = openai.OpenAI(base_url=parley_server.url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        revoked.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])


def test_rate_limit_is_rate_limit_error(client, org_a, tier_factory):
    tier_factory("pro", requests_per_minute=1)
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "/echo one"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "/echo two"}])
    error = caught.value
    assert error.status_code == 429
    assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "requests"
    assert int(error.response.headers["Retry-After"]) >= 1


def test_exhausted_budget_is_rate_limit_error_with_its_own_code(client, org_a, fake_provider):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.000001"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "budget_exceeded"
    assert caught.value.body["type"] == "insufficient_quota"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert not fake_provider.openai.requests


def test_unknown_and_forbidden_models_are_404(client, org_a, fake_provider, tier_factory):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    tier_factory("pro", allowed_models=["demo"])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert not fake_provider.openai.requests


def test_bad_request_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo", messages=[])
    assert caught.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=[{"role": "robot", "content": "hi"}])


def test_models_list(client, fake_provider, tier_factory):
    tier_factory("pro", allowed_models=["demo", MODEL])
    ids = [m.id for m in client.models.list()]
    assert ids == ["demo", MODEL] or sorted(ids) == sorted(["demo", MODEL])
    assert client.models.retrieve("demo").owned_by == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("claude-opus-4-5")


def test_demo_model_streams(client):
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "/echo Parley says hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Parley says hi"


def test_conversation_on_request(client, org_a):
    raw = client.chat.completions.with_raw_response.create(
        model="demo",
        messages=[{"role": "user", "content": "/echo kept"}],
        extra_headers={"X-Parley-Conversation": "new"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "kept"
    conversation = Conversation.objects.get(id=raw.headers["X-Parley-Conversation"])
    assert conversation.owner_id == org_a.member.user_id
    contents = list(Message.objects.filter(conversation=conversation).order_by("position").values_list("content", flat=True))
    assert contents == ["/echo kept", "kept"]
    # a later request continues it (streamed)
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "/echo again"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Parley-Conversation": str(conversation.id)},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "again"
    assert chunks[-1].usage is not None
    assert Message.objects.filter(conversation=conversation).count() == 4


def test_conversation_of_another_tenant_is_404(parley_server, key_b, org_a):
    conversation = Conversation.objects.create(organization=org_a.organization, owner=org_a.member.user)
    other = openai.OpenAI(base_url=parley_server.url + "/v1", api_key=key_b, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Parley-Conversation": str(conversation.id)},
        )
