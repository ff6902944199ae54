"""Resuming a conversation (docs/protocol.md, `conversation.subscribe`): `after_seq` replays only the deltas
the client missed while the answer is live, in this process or another; without it (or when it cannot be
replayed) a snapshot; and an answer that already ended is told by its `generation.finished`."""

import os
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from django.urls import path

from accounts.ws import WebsocketAuthStack
from conversations import hub as hub_module
from conversations.consumers import ChatConsumer
from conversations.models import Message
from tests.conversations.conftest import joined_deltas, wait_idle

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="cross-process delivery needs Redis")


@pytest.fixture
async def other_process():
    """A second hub with its own Redis connection and process id: a simulated second Daphne process."""
    from channels_redis.pubsub import RedisPubSubChannelLayer
    from django.conf import settings

    layer = RedisPubSubChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
    hub = hub_module.Hub(process_id="other-process", layer=layer)
    app = WebsocketAuthStack(URLRouter([path("ws/chat/", ChatConsumer.as_asgi(hub=hub))]))
    yield hub, app
    await hub.aclose()
    await layer.flush()


def _deltas(frames: list[dict], message_id: str) -> dict[int, str]:
    return {f["seq"]: f["text"] for f in frames if f["type"] == "delta" and f["message"] == message_id}


async def _streaming(ws_connect, secret: str, at_least: int = 6):
    """A socket whose /long answer has streamed `at_least` deltas: (client, frames, conversation, answer)."""
    client = await ws_connect(secret=secret)
    await client.send_message("/long")
    frames = await client.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= at_least)
    return client, frames, frames[0]["conversation"]["id"], frames[2]["message"]["id"]


def _assert_replay_after(got: list[dict], answer_id: str, after_seq: int, sender: dict[int, str]) -> None:
    """What a resuming subscriber got: no snapshot, the deltas after `after_seq` without gap, as the sender's."""
    kinds = [f["type"] for f in got]
    assert "message.snapshot" not in kinds, kinds[:5]
    assert got[0]["type"] == "generation.started" and got[0]["message"]["id"] == answer_id
    deltas = [f for f in got if f["type"] == "delta"]
    assert deltas and deltas[0]["seq"] == after_seq + 1, [f["seq"] for f in deltas[:3]]
    assert [f["seq"] for f in deltas] == list(range(after_seq + 1, after_seq + 1 + len(deltas)))
    assert all(sender[f["seq"]] == f["text"] for f in deltas)
    final = got[-1]
    assert final["type"] == "generation.finished" and final["message"]["id"] == answer_id
    missed = "".join(sender[s] for s in range(1, after_seq + 1))
    assert missed + "".join(f["text"] for f in deltas) == final["message"]["content"]


# --- in this process ---------------------------------------------------------------------------


async def test_after_seq_replays_only_the_missed_deltas(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    secret = await member_secret(org_a.member)
    first, frames, conversation_id, answer_id = await _streaming(ws_connect, secret)

    second = await ws_connect(secret=secret)
    await second.send({"type": "conversation.subscribe", "conversation": conversation_id, "after_seq": 3})
    got = await second.until_finished()
    frames += await first.until_finished()
    _assert_replay_after(got, answer_id, 3, _deltas(frames, answer_id))
    await wait_idle()


async def test_the_same_socket_resubscribing_after_a_gap_gets_the_deltas_again(org_a, member_secret, ws_connect, settings):
    """A client that lost deltas on the way resubscribes with the seq it has: it gets them again."""
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    client, frames, conversation_id, answer_id = await _streaming(ws_connect, await member_secret(org_a.member))
    await client.send({"type": "conversation.subscribe", "conversation": conversation_id, "after_seq": 2})
    got = await client.until_finished()
    restart = max(i for i, f in enumerate(got) if f["type"] == "generation.started")
    before_restart = frames + got[:restart]
    _assert_replay_after(got[restart:], answer_id, 2, _deltas(before_restart + got[restart:], answer_id))
    await wait_idle()


async def test_after_seq_ahead_of_the_answer_gets_a_snapshot(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    secret = await member_secret(org_a.member)
    first, frames, conversation_id, answer_id = await _streaming(ws_connect, secret)
    second = await ws_connect(secret=secret)
    await second.send({"type": "conversation.subscribe", "conversation": conversation_id, "after_seq": 10**9})
    got = await second.until_finished()
    frames += await first.until_finished()
    assert [f["type"] for f in got[:2]] == ["generation.started", "message.snapshot"]
    snapshot = got[1]
    later = [f for f in got if f["type"] == "delta"]
    assert [f["seq"] for f in later] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(later)))
    assert snapshot["content"] + "".join(f["text"] for f in later) == got[-1]["message"]["content"]
    assert joined_deltas(frames, answer_id) == got[-1]["message"]["content"]
    await wait_idle()


async def test_subscribing_after_the_answer_ended_gets_its_final_state(org_a, member_secret, ws_connect):
    secret = await member_secret(org_a.member)
    client = await ws_connect(secret=secret)
    await client.send_message("/echo the end")
    frames = await client.until_finished()
    await wait_idle()
    conversation_id = frames[0]["conversation"]["id"]

    for subscribe in ({}, {"after_seq": 1}, {"after_seq": 0}):
        other = await ws_connect(secret=secret)
        await other.send({"type": "conversation.subscribe", "conversation": conversation_id, **subscribe})
        finished = await other.receive()
        assert finished == frames[-1], subscribe  # the same frame the sender got, read from the database
        assert await other.nothing_pending()

    # After a regeneration, the latest answer is the one told.
    await client.send({"type": "message.regenerate", "conversation": conversation_id, "client_id": str(uuid.uuid4())})
    regenerated = (await client.until_finished())[-1]
    await wait_idle()
    other = await ws_connect(secret=secret)
    await other.send({"type": "conversation.subscribe", "conversation": conversation_id})
    assert await other.receive() == regenerated
    answer = await database_sync_to_async(Message.objects.get)(id=regenerated["message"]["id"])
    assert answer.content == regenerated["message"]["content"] == "the end"


async def test_subscribing_to_a_conversation_without_an_answer_sends_nothing(org_a, member_secret, ws_connect):
    from conversations.services import conversation_create

    conversation = await database_sync_to_async(conversation_create)(membership=org_a.member, title="empty")
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send({"type": "conversation.subscribe", "conversation": str(conversation.id), "after_seq": 0})
    assert await client.nothing_pending()


# --- across processes --------------------------------------------------------------------------


@needs_redis
async def test_after_seq_replays_the_missed_deltas_from_another_process(
    org_a, member_secret, ws_connect, settings, other_process
):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    other_hub, other_app = other_process
    secret = await member_secret(org_a.member)
    here, frames, conversation_id, answer_id = await _streaming(ws_connect, secret)

    there = await ws_connect(secret=secret, app=other_app)
    await there.send({"type": "conversation.subscribe", "conversation": conversation_id, "after_seq": 4})
    got = await there.until_finished()
    frames += await here.until_finished()
    assert other_hub.generation_local(uuid.UUID(answer_id)) is None  # it ran in the first process
    _assert_replay_after(got, answer_id, 4, _deltas(frames, answer_id))
    await wait_idle()


@needs_redis
async def test_another_process_tells_an_ended_answer_from_the_database(org_a, member_secret, ws_connect, other_process):
    _, other_app = other_process
    secret = await member_secret(org_a.member)
    here = await ws_connect(secret=secret)
    await here.send_message("/echo ended over there")
    frames = await here.until_finished()
    await wait_idle()
    there = await ws_connect(secret=secret, app=other_app)
    await there.send({"type": "conversation.subscribe", "conversation": frames[0]["conversation"]["id"], "after_seq": 1})
    assert await there.receive() == frames[-1]
    assert await there.nothing_pending()
