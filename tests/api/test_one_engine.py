"""One turn engine behind the websocket, the REST API and the OpenAI-compatible endpoint.

The same conversation of events (the fake provider's script) through each entry point must end in
the same ledger row, priced from the usage the fake provider reported; the plan's limits and its
models apply the same way everywhere, before any provider call.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import openai
import pytest
from websockets.sync.client import connect

from billing.models import LedgerEntry, Price, Reservation
from conversations.models import Conversation, Message
from llm.models import ModelConfig
from tests.fakeprovider.script import reply, server_error

from .conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ENTRY_POINTS = ["websocket", "rest", "openai"]
CHEAP, EXPENSIVE = "gemini-3-flash", "gpt-5.2-instant"  # gemini-3-flash falls back to gpt-5.2-instant


def _ws(server, key: str, content: str, model: str, *, setup=None) -> dict:
    """One turn over the websocket: {"finished": message} or {"error": frame}."""
    url = server.url.replace("http://", "ws://") + "/ws/chat/"
    with connect(url, additional_headers=bearer(key), open_timeout=10) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "message.send",
                    "conversation": setup,
                    "content": content,
                    "model": model,
                    "client_id": str(uuid.uuid4()),
                }
            )
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=30))
            if frame["type"] == "error":
                return {"error": frame["code"], "message": frame["message"]}
            if frame["type"] == "generation.finished":
                message = frame["message"]
                return {"status": message["status"], "text": message["content"], "error": (message["error"] or {}).get("code")}
    raise AssertionError("no answer over the websocket")


def _rest(http, key: str, content: str, model: str, *, setup=None) -> dict:
    body = {"content": content, "model": model}
    url = "/api/v1/conversations/send/"
    if setup is not None:
        url = f"/api/v1/conversations/{setup}/messages/"
    response = http.post(url, json=body, headers=bearer(key))
    data = response.json()
    if response.status_code >= 400:
        return {"error": data["error"]["code"], "message": data["error"]["message"], "status_code": response.status_code}
    answer = data["assistant_message"]
    return {"status": answer["status"], "text": answer["content"], "error": answer.get("error_code") or None}


def _openai(server, key: str, content: str, model: str, *, system: str | None = None) -> dict:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    try:
        completion = client.chat.completions.create(model=model, messages=messages)
    except openai.APIStatusError as exc:
        error = exc.body if isinstance(exc.body, dict) else {}
        error = error.get("error", error)
        return {"error": error.get("code"), "message": error.get("message"), "status_code": exc.status_code}
    return {"status": "complete", "text": completion.choices[0].message.content, "model": completion.model}


def _turn(entry: str, *, server, http, key, content: str, model: str, system: str | None = None, member=None) -> dict:
    if entry == "openai":
        return _openai(server, key, content, model, system=system)
    setup = None
    if system is not None:  # a conversation whose system prompt is `system`
        conversation = Conversation.objects.create(
            organization=member.organization, owner=member.user, model=model, system_prompt=system
        )
        setup = str(conversation.id)
    if entry == "websocket":
        return _ws(server, key, content, model, setup=setup)
    return _rest(http, key, content, model, setup=setup)


def _set_model(alias: str, **fields) -> None:
    """Edit a registry row as staff do (a save, which every process's registry copy forgets)."""
    row = ModelConfig.objects.get(alias=alias)
    for name, value in fields.items():
        setattr(row, name, value)
    row.save()


def _settled(organization, count: int, timeout: float = 10.0) -> list[LedgerEntry]:
    """The turn's ledger rows (not the new conversation's title call) once no reservation is open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(LedgerEntry.objects.filter(organization=organization).exclude(turn_request_id__startswith="title-"))
        if len(rows) >= count and not Reservation.objects.filter(organization=organization, status="open").exists():
            return rows
        time.sleep(0.02)
    raise AssertionError(f"expected {count} ledger rows and no open reservation")


def _ledger_row(row: LedgerEntry) -> dict:
    return {
        "model": row.model,
        "provider": row.provider,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost": row.cost,
        "estimated": row.estimated,
        "api_key": row.api_key_id is not None,
    }


def _expected_row(model: str, provider: str, usage: tuple[int, int]) -> dict:
    price = Price.objects.filter(model=model).order_by("-effective_at").first()
    return {
        "model": model,
        "provider": provider,
        "input_tokens": usage[0],
        "output_tokens": usage[1],
        "cost": price.cost(input_tokens=usage[0], output_tokens=usage[1]),
        "estimated": False,
        "api_key": True,
    }


@pytest.fixture
def turn(parley_server, http, key_a, org_a):
    def run(entry: str, content: str, model: str, **extra) -> dict:
        return _turn(entry, server=parley_server, http=http, key=key_a, content=content, model=model, member=org_a.member, **extra)

    return run


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_same_turn_bills_the_same_ledger_row_everywhere(entry, turn, fake_provider, org_a):
    fake_provider.openai.script(reply("Hel", "lo", usage=(21, 3)))
    result = turn(entry, "Say hello", EXPENSIVE)
    assert result["status"] == "complete" and result["text"] == "Hello"
    rows = _settled(org_a.organization, 1)
    assert len(rows) == 1
    assert _ledger_row(rows[0]) == _expected_row(EXPENSIVE, "openai", (21, 3))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_fallback_the_plan_lacks_is_never_called(entry, turn, fake_provider, org_a):
    tier = org_a.organization.tier
    tier.allowed_models = ["demo", CHEAP]  # not its fallbacks gemini-2.5-flash and gpt-5.2-instant
    tier.save()
    fake_provider.gemini.default = server_error(500)
    result = turn(entry, "Hi", CHEAP)
    assert result.get("status") != "complete"
    assert fake_provider.openai.requests == [], "gpt-5.2-instant is not in the plan"
    assert all(r.model == "gemini-3-flash-preview" for r in fake_provider.gemini.requests), "gemini-2.5-flash is not in the plan"
    _settled(org_a.organization, 0)  # /v1 settles right after the answer is handed over
    assert not LedgerEntry.objects.filter(organization=org_a.organization).exclude(model=CHEAP).exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_allowed_fallback_is_reserved_for_billed_at_its_price_and_named(entry, turn, fake_provider, org_a):
    _set_model(CHEAP, fallbacks=[EXPENSIVE])
    fake_provider.gemini.default = server_error(500)
    fake_provider.openai.script(reply("From ", "the fallback", usage=(30, 4)))
    result = turn(entry, "Hi", CHEAP)
    assert result["status"] == "complete" and result["text"] == "From the fallback"
    if entry == "openai":
        assert result["model"] == EXPENSIVE  # the model that answered
    else:
        assert Message.objects.get(role="assistant", conversation__organization=org_a.organization).model == EXPENSIVE
    rows = [r for r in _settled(org_a.organization, 1) if r.model == EXPENSIVE]
    assert _ledger_row(rows[0]) == _expected_row(EXPENSIVE, "openai", (30, 4))
    # The reservation was made for the expensive fallback, not for the cheap model asked for.
    reservation = Reservation.objects.exclude(request_id__startswith="title-").get(organization=org_a.organization)
    assert reservation.amount >= rows[0].cost


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_plans_length_limit_applies_to_the_system_message_too(entry, turn, fake_provider, org_a):
    tier = org_a.organization.tier
    tier.max_message_chars = 100
    tier.save()
    result = turn(entry, "short question", EXPENSIVE, system="x" * 200)
    assert result["error"] == "message_too_long", result
    assert fake_provider.openai.requests == []
    assert not LedgerEntry.objects.exists() and not Reservation.objects.exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_prompt_larger_than_the_context_window_is_refused_before_the_call(entry, turn, fake_provider, org_a):
    for alias in (EXPENSIVE, "claude-haiku-4-5", CHEAP):
        _set_model(alias, context_window=200)
    result = turn(entry, "word " * 400, EXPENSIVE)
    assert result["error"] == "context_length_exceeded", result
    assert fake_provider.openai.requests == [] and fake_provider.anthropic.requests == []
    assert not Reservation.objects.exists()


def test_the_reservation_covers_the_most_expensive_model_that_can_serve(org_a, fake_provider):
    from conversations import engine
    from llm.types import ChatRequest
    from llm.types import Message as LLMMessage

    def reserved(fallbacks: list[str]) -> Decimal:
        _set_model(CHEAP, fallbacks=fallbacks)
        prepared = engine.turn_prepare(
            caller=engine.Caller(membership=org_a.member),
            request=ChatRequest(
                model=CHEAP,
                messages=(LLMMessage(role="user", content="Hi"),),
                request_id=str(uuid.uuid4()),
                max_output_tokens=100,
            ),
        )
        return prepared.authorization.reserved_cost

    alone, with_expensive = reserved([]), reserved([EXPENSIVE])
    assert with_expensive > alone
    expensive = Price.objects.filter(model=EXPENSIVE).order_by("-effective_at").first()
    assert with_expensive >= expensive.cost(input_tokens=1, output_tokens=100)
