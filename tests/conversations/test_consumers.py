"""The chat websocket, frame by frame (shared/PROTOCOL.md), over the real ASGI stack and the demo model."""

import asyncio
import json
import uuid
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client as HttpClient

from conversations.models import Conversation, Message, Status
from tests.conversations.conftest import joined_deltas, ledger_for, wait_idle

# serialized_rollback: the flush after each test would otherwise drop the rows seeded by migrations (tiers, models).
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _messages(**filters):
    return list(Message.objects.filter(**filters).order_by("position"))


async def _finished_turn(client, content="hello there", conversation=None, **extra):
    client_id = await client.send_message(content, conversation=conversation, **extra)
    frames = await client.until_finished()
    return client_id, frames


# --- a turn -----------------------------------------------------------------------------------


async def test_send_new_conversation_streams_deltas_that_join_to_the_content(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    client_id = await client.send_message("Tell me something")
    frames = await client.until_finished()
    kinds = [f["type"] for f in frames]
    assert kinds[:3] == ["conversation.created", "message.created", "generation.started"]
    assert kinds[-1] == "generation.finished"
    assert set(kinds[3:-1]) == {"delta"}

    conversation = frames[0]["conversation"]
    assert set(conversation) == {"id", "title", "model"} and conversation["model"] == "demo"
    created = frames[1]["message"]
    assert created["role"] == "user" and created["content"] == "Tell me something"
    assert created["client_id"] == client_id and created["conversation"] == conversation["id"]
    started = frames[2]["message"]
    assert started["role"] == "assistant" and started["status"] == "streaming"
    assert started["conversation"] == conversation["id"] and started["model"] == "demo"

    finished = frames[-1]["message"]
    assert finished["id"] == started["id"]
    assert finished["status"] == "complete" and finished["error"] is None
    assert finished["content"] and joined_deltas(frames, started["id"]) == finished["content"]
    usage = finished["usage"]
    assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0
    assert isinstance(usage["cost"], str)

    answer = await database_sync_to_async(Message.objects.get)(id=started["id"])
    assert answer.status == Status.COMPLETE and answer.content == finished["content"]
    assert answer.token_count > 0 and answer.last_seq == len([f for f in frames if f["type"] == "delta"])
    assert Decimal(usage["cost"]) == answer.cost
    await wait_idle()
    # The first answer titles the conversation (the demo model's conversations: the first message).
    titled = await database_sync_to_async(Conversation.objects.get)(id=conversation["id"])
    assert titled.title == "Tell me something"


async def test_a_free_answer_costs_a_plain_decimal_string_without_exponent(org_a, member_secret, ws_connect):
    # str(Decimal("0E-8")) is "0E-8": PROTOCOL.md's `cost` is a plain decimal string at Message.cost's places.
    client = await ws_connect(secret=await member_secret(org_a.member))
    _, frames = await _finished_turn(client, "/echo free")
    cost = frames[-1]["message"]["usage"]["cost"]
    assert cost == "0.00000000"
    # A reconnecting subscriber gets the same frame rebuilt from the saved row.
    answer = await database_sync_to_async(Message.objects.get)(id=frames[-1]["message"]["id"])
    from conversations.frames import cost_str, generation_finished

    assert generation_finished(answer)["message"]["usage"]["cost"] == "0.00000000"
    assert cost_str(Decimal("1.5E-7")) == "0.00000015" and cost_str(Decimal("12.3")) == "12.30000000"
    await wait_idle()


async def test_second_turn_in_the_same_conversation(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    _, first = await _finished_turn(client)
    conversation_id = first[0]["conversation"]["id"]
    _, second = await _finished_turn(client, "/echo again", conversation=conversation_id)
    assert second[0]["type"] == "message.created"  # no conversation.created this time
    assert second[-1]["message"]["content"] == "again"
    positions = await database_sync_to_async(
        lambda: list(Message.objects.filter(conversation_id=conversation_id).values_list("position", "role"))
    )()
    assert sorted(positions) == [(1, "user"), (2, "assistant"), (3, "user"), (4, "assistant")]
    await wait_idle()


async def test_resend_of_a_client_id_creates_nothing_new(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    client_id, frames = await _finished_turn(client, "/echo once")
    count = await database_sync_to_async(Message.objects.count)()
    conversations = await database_sync_to_async(Conversation.objects.count)()

    await client.send_message("/echo once", client_id=client_id)  # conversation null again, like a lost ack
    again = await client.until_finished()
    assert [f["type"] for f in again] == ["message.created", "generation.started", "generation.finished"]
    assert again[0]["message"]["id"] == frames[1]["message"]["id"]
    assert again[-1]["message"] == frames[-1]["message"]
    assert await database_sync_to_async(Message.objects.count)() == count
    assert await database_sync_to_async(Conversation.objects.count)() == conversations

    # A second socket resending it while it is known gets the same answer too.
    other = await ws_connect(secret=await member_secret(org_a.member))
    await other.send_message("/echo once", client_id=client_id, conversation=frames[0]["conversation"]["id"])
    assert (await other.until_finished())[-1]["message"]["id"] == frames[-1]["message"]["id"]
    assert await database_sync_to_async(Message.objects.count)() == count
    await wait_idle()


async def test_resend_while_streaming_follows_the_same_answer(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    client = await ws_connect(secret=await member_secret(org_a.member))
    client_id = await client.send_message("/long")
    frames = await client.until_type("delta")
    other = await ws_connect(secret=await member_secret(org_a.member))
    await other.send_message("/long", client_id=client_id)
    got = await other.until_finished()
    assert [f["type"] for f in got[:3]] == ["message.created", "generation.started", "message.snapshot"]
    answer_id = got[1]["message"]["id"]
    snapshot = got[2]
    rest = [f for f in got[3:] if f["type"] == "delta"]
    assert [f["seq"] for f in rest] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(rest)))
    assert snapshot["content"] + "".join(f["text"] for f in rest) == got[-1]["message"]["content"]
    frames += await client.until_finished()
    assert joined_deltas(frames, answer_id) == got[-1]["message"]["content"]
    assert await database_sync_to_async(Message.objects.count)() == 2
    await wait_idle()


async def test_stop_keeps_the_partial_text_ends_cancelled_and_bills(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/long")
    frames = await client.until_type("generation.started")
    answer_id = frames[-1]["message"]["id"]
    frames += await client.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
    await client.send({"type": "generation.stop", "message": answer_id})
    frames += await client.until_finished()
    finished = frames[-1]["message"]
    assert finished["status"] == "cancelled"
    assert finished["content"] and joined_deltas(frames, answer_id) == finished["content"]
    assert len(finished["content"].split()) < 300  # it really stopped early
    assert finished["usage"]["output_tokens"] > 0
    answer = await database_sync_to_async(Message.objects.get)(id=answer_id)
    assert answer.status == Status.CANCELLED and answer.content == finished["content"]
    assert answer.output_tokens > 0
    entries = await ledger_for(answer.id)  # billed once, for what was generated
    assert len(entries) == 1 and entries[0].output_tokens == answer.output_tokens
    # Stopping a finished answer again is harmless.
    await client.send({"type": "generation.stop", "message": answer_id})
    assert await client.nothing_pending()
    await wait_idle()


async def test_provider_failure_mid_stream_ends_failed_with_the_partial_text(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/fail")
    frames = await client.until_finished()
    answer_id = frames[-1]["message"]["id"]
    finished = frames[-1]["message"]
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "provider_error" and finished["error"]["message"]
    assert finished["content"] and joined_deltas(frames, answer_id) == finished["content"]
    answer = await database_sync_to_async(Message.objects.get)(id=answer_id)
    assert answer.status == Status.FAILED and answer.error_code == "provider_error"
    assert answer.content == finished["content"]
    await wait_idle()


async def test_tool_frames(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message('/tool calculator {"expression": "6*7"}')
    frames = await client.until_finished()
    kinds = [f["type"] for f in frames]
    call = next(f for f in frames if f["type"] == "tool.call")
    result = next(f for f in frames if f["type"] == "tool.result")
    answer_id = frames[-1]["message"]["id"]
    assert call["message"] == answer_id and call["call"]["name"] == "calculator"
    assert call["call"]["arguments"] == {"expression": "6*7"} and call["call"]["id"]
    assert result["call_id"] == call["call"]["id"] and result["message"] == answer_id
    assert "42" in json.dumps(result["result"])
    assert kinds.index("tool.call") < kinds.index("tool.result")
    assert frames[-1]["message"]["status"] == "complete"
    assert joined_deltas(frames, answer_id) == frames[-1]["message"]["content"]
    answer = await database_sync_to_async(Message.objects.get)(id=answer_id)
    assert answer.tool_events and answer.tool_events[0]["call"]["name"] == "calculator"
    await wait_idle()


async def test_busy_while_an_answer_streams(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/long")
    frames = await client.until_type("generation.started")
    conversation_id = frames[0]["conversation"]["id"]
    client_id = await client.send_message("another", conversation=conversation_id)
    error = (await client.until_type("error"))[-1]
    assert error["code"] == "busy" and error["client_id"] == client_id and error["retry_after"] is None
    await client.send({"type": "generation.stop", "message": frames[-1]["message"]["id"]})
    await client.until_finished()
    assert await database_sync_to_async(Message.objects.filter(content="another").count)() == 0
    await wait_idle()


async def test_regenerate_and_edit(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    _, frames = await _finished_turn(client, "/echo first")
    conversation_id = frames[0]["conversation"]["id"]
    first_answer = frames[-1]["message"]["id"]
    user_message = frames[1]["message"]["id"]

    regen_id = str(uuid.uuid4())
    await client.send({"type": "message.regenerate", "conversation": conversation_id, "client_id": regen_id})
    regen = await client.until_finished()
    assert [f["type"] for f in regen][0] == "generation.started"
    assert regen[-1]["message"]["id"] != first_answer and regen[-1]["message"]["content"] == "first"
    # Resending the regeneration creates nothing.
    await client.send({"type": "message.regenerate", "conversation": conversation_id, "client_id": regen_id})
    assert (await client.until_finished())[-1]["message"]["id"] == regen[-1]["message"]["id"]

    await client.send({"type": "message.edit", "message": user_message, "content": "/echo second", "client_id": str(uuid.uuid4())})
    edit = await client.until_finished()
    assert [f["type"] for f in edit][:2] == ["message.created", "generation.started"]
    assert edit[0]["message"]["content"] == "/echo second" and edit[-1]["message"]["content"] == "second"

    visible = await database_sync_to_async(
        lambda: list(Message.objects.filter(conversation_id=conversation_id, superseded=False).order_by("position"))
    )()
    assert [(m.role, m.content) for m in visible] == [("user", "/echo second"), ("assistant", "second")]
    old = await database_sync_to_async(Message.objects.get)(id=first_answer)
    assert old.superseded
    await wait_idle()


# --- following ---------------------------------------------------------------------------------


async def test_second_subscriber_gets_a_snapshot_then_the_same_deltas(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    secret = await member_secret(org_a.member)
    first = await ws_connect(secret=secret)
    await first.send_message("/long")
    frames = await first.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 5)
    conversation_id = frames[0]["conversation"]["id"]
    answer_id = frames[2]["message"]["id"]

    second = await ws_connect(secret=secret)
    await second.send({"type": "conversation.subscribe", "conversation": conversation_id})
    got = await second.until_finished()
    frames += await first.until_finished()
    assert got[0]["type"] == "generation.started" and got[0]["message"]["id"] == answer_id
    snapshot = got[1]
    assert snapshot["type"] == "message.snapshot" and snapshot["message"] == answer_id and snapshot["seq"] >= 5
    first_deltas = {f["seq"]: f["text"] for f in frames if f["type"] == "delta"}
    assert snapshot["content"] == "".join(first_deltas[s] for s in range(1, snapshot["seq"] + 1))
    later = [f for f in got if f["type"] == "delta"]
    # No gap and no duplicate between the snapshot and the live deltas, and the same deltas as the sender's.
    assert [f["seq"] for f in later] == list(range(snapshot["seq"] + 1, len(first_deltas) + 1))
    assert all(first_deltas[f["seq"]] == f["text"] for f in later)
    final = got[-1]["message"]["content"]
    assert snapshot["content"] + "".join(f["text"] for f in later) == final == frames[-1]["message"]["content"]

    # The follower also sees the next turn from the start.
    await first.send_message("/echo next", conversation=conversation_id)
    nxt = await second.until_finished()
    assert [f["type"] for f in nxt][:2] == ["message.created", "generation.started"]
    assert nxt[-1]["message"]["content"] == "next"
    await first.until_finished()
    await wait_idle()


async def test_subscribe_to_an_idle_conversation_tells_the_last_answer_then_the_next_turn(org_a, member_secret, ws_connect):
    secret = await member_secret(org_a.member)
    client = await ws_connect(secret=secret)
    _, frames = await _finished_turn(client)
    await wait_idle()
    conversation_id = frames[0]["conversation"]["id"]
    other = await ws_connect(secret=secret)
    await other.send({"type": "conversation.subscribe", "conversation": conversation_id, "after_seq": 3})
    assert await other.receive() == frames[-1]  # the answer that ended, from the database
    assert await other.nothing_pending()
    await client.send_message("/echo next", conversation=conversation_id)
    nxt = await other.until_finished()
    assert [f["type"] for f in nxt][:2] == ["message.created", "generation.started"]
    assert nxt[-1]["message"]["content"] == "next"
    await client.until_finished()
    await wait_idle()


async def test_a_dropped_socket_does_not_stop_the_answer(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.002
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/long")
    frames = await client.until_type("delta")
    answer_id = frames[2]["message"]["id"]
    await client.close()
    from conversations.generation import generation_wait

    async with asyncio.timeout(20):
        answer = await generation_wait(uuid.UUID(answer_id))
    assert answer.status == Status.COMPLETE and len(answer.content.split()) >= 300
    await wait_idle()


# --- access ------------------------------------------------------------------------------------


async def test_foreign_conversation_and_message_answer_not_found(org_a, org_b, member_secret, ws_connect):
    owner_client = await ws_connect(secret=await member_secret(org_a.member))
    _, frames = await _finished_turn(owner_client)
    conversation_id = frames[0]["conversation"]["id"]
    answer_id = frames[-1]["message"]["id"]
    user_message_id = frames[1]["message"]["id"]

    for intruder in (org_b.owner, org_a.admin):  # another tenant, and another member of the same one
        client = await ws_connect(secret=await member_secret(intruder))
        await client.send({"type": "conversation.subscribe", "conversation": conversation_id})
        assert (await client.receive())["code"] == "not_found"
        client_id = await client.send_message("hi", conversation=conversation_id)
        error = await client.receive()
        assert error["code"] == "not_found" and error["client_id"] == client_id
        await client.send({"type": "generation.stop", "message": answer_id})
        assert (await client.receive())["code"] == "not_found"
        await client.send({"type": "message.regenerate", "conversation": conversation_id, "client_id": str(uuid.uuid4())})
        assert (await client.receive())["code"] == "not_found"
        await client.send(
            {"type": "message.edit", "message": user_message_id, "content": "x", "client_id": str(uuid.uuid4())}
        )
        assert (await client.receive())["code"] == "not_found"
    # Unknown ids answer exactly the same.
    await client.send({"type": "conversation.subscribe", "conversation": str(uuid.uuid4())})
    assert (await client.receive())["code"] == "not_found"
    await wait_idle()


async def _closed_after_error(client) -> tuple[str, int]:
    """An accepted socket the server closes at once: (the error frame's code, the close code)."""
    error = await client.receive()
    output = await client.communicator.receive_output(timeout=10)
    assert error["type"] == "error" and output["type"] == "websocket.close", (error, output)
    return error["code"], output["code"]


async def test_unauthenticated_socket_is_closed_with_4401(ws_connect, db):
    # Accepted, then closed: a refused upgrade reaches real clients as a bare HTTP 403 (test_ws_auth.py).
    assert await _closed_after_error(await ws_connect()) == ("unauthenticated", 4401)
    assert await _closed_after_error(await ws_connect(secret="pk_not-a-real-key")) == ("unauthenticated", 4401)


def _session_cookie(user) -> str:
    http = HttpClient()
    http.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={http.cookies[settings.SESSION_COOKIE_NAME].value}"


async def test_session_needs_an_allowed_origin(org_a, ws_connect):
    cookie = await database_sync_to_async(_session_cookie)(org_a.member.user)
    bad = [(b"cookie", cookie.encode()), (b"origin", b"https://evil.example")]
    assert await _closed_after_error(await ws_connect(headers=bad)) == ("unauthenticated", 4401)
    missing = [(b"cookie", cookie.encode())]
    assert await _closed_after_error(await ws_connect(headers=missing)) == ("unauthenticated", 4401)
    good = [(b"cookie", cookie.encode()), (b"origin", b"http://localhost:8000")]
    client = await ws_connect(headers=good)
    _, frames = await _finished_turn(client, "/echo via session")
    assert frames[-1]["message"]["content"] == "via session"
    await wait_idle()


# --- bad frames --------------------------------------------------------------------------------


async def test_every_bad_frame_gets_an_error_and_the_socket_stays_open(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    cases = [
        ("{not json", "invalid_input"),
        ("[1, 2]", "invalid_input"),
        ('"text"', "invalid_input"),
        ("{}", "invalid_input"),
        ('{"type": "nope"}', "invalid_input"),
        ('{"type": 5}', "invalid_input"),
        ('{"type": "conversation.subscribe"}', "invalid_input"),
        ('{"type": "conversation.subscribe", "conversation": "not-a-uuid"}', "invalid_input"),
        ('{"type": "generation.stop", "message": 12}', "invalid_input"),
        ('{"type": "message.send", "content": "hi", "client_id": "nope"}', "invalid_input"),
        ('{"type": "message.send", "content": "hi"}', "invalid_input"),
        ("x" * (64 * 1024 + 1), "frame_too_large"),
    ]
    for text, code in cases:
        await client.send(text)
        error = await client.receive()
        assert error["type"] == "error" and error["code"] == code, (text[:60], error)
        assert error["message"] and "retry_after" in error
    await client.communicator.send_to(bytes_data=b"\x00\x01")
    assert (await client.receive())["code"] == "invalid_input"

    client_id = str(uuid.uuid4())
    for content in ("", "   ", None, 42):
        await client.send({"type": "message.send", "conversation": None, "content": content, "client_id": client_id})
        error = await client.receive()
        assert error["code"] == "invalid_input" and error["client_id"] == client_id
    await client.send({"type": "message.send", "conversation": None, "content": "hi", "client_id": client_id, "model": "no-such-model"})
    assert (await client.receive())["code"] == "model_not_allowed"

    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}
    assert await database_sync_to_async(Message.objects.count)() == 0


async def test_message_too_long_and_model_not_allowed_come_from_the_tier(org_a, member_secret, ws_connect, tier_factory):
    await database_sync_to_async(tier_factory)("pro", max_message_chars=20, allowed_models=["demo"])
    client = await ws_connect(secret=await member_secret(org_a.member))
    client_id = await client.send_message("x" * 21)
    error = await client.receive()
    assert error["code"] == "message_too_long" and error["client_id"] == client_id
    client_id = await client.send_message("short", model="gpt-5.2-instant")
    error = await client.receive()
    assert error["code"] == "model_not_allowed" and error["client_id"] == client_id
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert await database_sync_to_async(Conversation.objects.count)() == 0


async def test_rate_limited(org_a, member_secret, ws_connect, tier_factory):
    await database_sync_to_async(tier_factory)("pro", requests_per_minute=1)
    client = await ws_connect(secret=await member_secret(org_a.member))
    await _finished_turn(client, "/echo one")
    client_id = await client.send_message("/echo two")
    error = await client.receive()
    assert error["type"] == "error" and error["code"] == "rate_limited" and error["client_id"] == client_id
    assert error["retry_after"] and error["retry_after"] > 0
    await wait_idle()


async def test_budget_exceeded(org_a, member_secret, ws_connect, tier_factory, fake_provider):
    await database_sync_to_async(tier_factory)("pro", monthly_budget_usd=Decimal("0"))
    client = await ws_connect(secret=await member_secret(org_a.member))
    client_id = await client.send_message("/echo one", model="gpt-5.2-instant")
    error = await client.receive()
    assert error["code"] == "budget_exceeded" and error["client_id"] == client_id
    assert error["retry_after"] and error["retry_after"] > 0
    assert await database_sync_to_async(Message.objects.count)() == 0


# --- a real provider (the fake provider server, through the vendor SDK) ------------------------


async def test_provider_turn_is_priced_and_billed(org_a, member_secret, ws_connect, fake_provider):
    from tests.fakeprovider import reply

    fake_provider.openai.script([reply("Hel", "lo", " there", usage=(30, 3))])
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("Hi", model="gpt-5.2-instant")
    frames = await client.until_finished()
    finished = frames[-1]["message"]
    assert finished["status"] == "complete" and finished["content"] == "Hello there"
    assert joined_deltas(frames, finished["id"]) == "Hello there"
    assert finished["usage"]["input_tokens"] == 30 and finished["usage"]["output_tokens"] == 3
    entries = await ledger_for(finished["id"])
    assert len(entries) == 1 and entries[0].cost > 0
    assert Decimal(finished["usage"]["cost"]) == entries[0].cost.quantize(Decimal("0.00000001"))
    assert fake_provider.openai.last_request.body["messages"][-1]["content"] == "Hi"
    await wait_idle()


async def test_provider_failure_after_deltas_ends_failed_and_keeps_the_text(org_a, member_secret, ws_connect, fake_provider):
    from tests.fakeprovider import stream_error

    fake_provider.openai.script([stream_error("overloaded", after=2, text=("Par", "tial", " never"))])
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("Hi", model="gpt-5.2-instant")
    frames = await client.until_finished()
    finished = frames[-1]["message"]
    assert finished["status"] == "failed" and finished["error"]["code"] == "provider_error"
    assert finished["content"] == "Partial" == joined_deltas(frames, finished["id"])
    answer = await database_sync_to_async(Message.objects.get)(id=finished["id"])
    assert answer.status == Status.FAILED and answer.content == "Partial" and answer.error_message
    assert len(await ledger_for(finished["id"])) == 1  # the broken call is billed once (estimated)
    await wait_idle()
