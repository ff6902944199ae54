"""The generation task and the hub: coalescing, partial saves, settlement on every path, cross-process delivery."""

import asyncio
import os
import re
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from django.urls import path

from accounts.ws import WebsocketAuthStack
from conversations import engine
from conversations import hub as hub_module
from conversations.consumers import ChatConsumer
from conversations.generation import generation_wait
from conversations.models import Message, Status
from conversations.turns import turn_start
from tests.conversations.conftest import joined_deltas, ledger_for, wait_idle

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


async def test_fast_model_deltas_are_coalesced(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/long")
    frames = await client.until_finished()
    finished = frames[-1]["message"]
    deltas = [f for f in frames if f["type"] == "delta"]
    assert finished["usage"]["output_tokens"] >= 300
    assert len(deltas) * 3 < finished["usage"]["output_tokens"], "tiny deltas must be coalesced"
    assert joined_deltas(frames, finished["id"]) == finished["content"]
    await wait_idle()


async def test_slow_model_gets_a_frame_per_token(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.04
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("Hello")
    frames = await client.until_finished()
    finished = frames[-1]["message"]
    deltas = [f for f in frames if f["type"] == "delta"]
    # At 25 pieces/s nothing waits for company: one frame per (word-sized) delta of the model.
    assert len(deltas) > 20 and all(re.fullmatch(r"\s*\S+", f["text"]) for f in deltas)
    assert joined_deltas(frames, finished["id"]) == finished["content"]
    await wait_idle()


async def test_partial_text_is_saved_while_streaming(org_a, member_secret, ws_connect, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/long")
    frames = await client.until_type("generation.started")
    answer_id = frames[-1]["message"]["id"]
    await asyncio.sleep(1.6)
    saved = await database_sync_to_async(Message.objects.get)(id=answer_id)
    assert saved.status == Status.STREAMING
    assert saved.content and saved.last_seq > 0
    frames += await client.receive_until(lambda f: f["type"] == "delta" and f["seq"] == saved.last_seq)
    assert joined_deltas(frames, answer_id) == saved.content  # the record matches the deltas up to its seq
    await client.send({"type": "generation.stop", "message": answer_id})
    await client.until_finished()
    await wait_idle()


async def test_cancelled_task_still_settles_and_ends_interrupted(org_a, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    started = await turn_start(
        membership=org_a.member, conversation_id=None, content="/long", model=None, client_id=uuid.uuid4()
    )
    generation = hub_module.default().generation_local(started.assistant_message.id)
    await asyncio.sleep(0.3)
    generation.task.cancel()  # not a stop: e.g. the server shutting down
    async with asyncio.timeout(10):
        message = await generation_wait(started.assistant_message.id)
    assert message.status == Status.INTERRUPTED
    assert message.content and message.output_tokens > 0
    entries = await ledger_for(message.id)
    assert len(entries) == 1 and entries[0].output_tokens == message.output_tokens
    await wait_idle()


async def test_generation_is_owned_by_the_process_and_kept_referenced(org_a, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.002
    started = await turn_start(
        membership=org_a.member, conversation_id=None, content="Hi", model=None, client_id=uuid.uuid4()
    )
    assert engine.running(str(started.assistant_message.id)), "the engine's registry holds the running call"
    assert engine._tasks, "and a strong reference to its task"
    async with hub_module.default().subscribe(started.conversation.id) as queue:
        frames = []
        async with asyncio.timeout(10):
            while not frames or frames[-1]["type"] != "generation.finished":
                frames.append(await queue.get())
    assert [f["type"] for f in frames[:3]] == ["conversation.created", "message.created", "generation.started"]
    assert joined_deltas(frames, str(started.assistant_message.id)) == frames[-1]["message"]["content"]
    await wait_idle()
    assert not engine._tasks and not engine.running(str(started.assistant_message.id))


# --- another process, through Redis -----------------------------------------------------------

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


@needs_redis
async def test_a_follower_in_another_process_gets_snapshot_and_deltas_through_redis(
    org_a, member_secret, ws_connect, settings, other_process
):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005
    other_hub, other_app = other_process
    secret = await member_secret(org_a.member)
    here = await ws_connect(secret=secret)
    await here.send_message("/long")
    frames = await here.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
    conversation_id = frames[0]["conversation"]["id"]
    answer_id = frames[2]["message"]["id"]

    there = await ws_connect(secret=secret, app=other_app)
    await there.send({"type": "conversation.subscribe", "conversation": conversation_id})
    got = await there.until_finished()
    frames += await here.until_finished()
    assert other_hub.generation_local(uuid.UUID(answer_id)) is None  # it ran in the first process
    assert got[0]["type"] == "generation.started" and got[1]["type"] == "message.snapshot"
    snapshot = got[1]
    later = [f for f in got if f["type"] == "delta"]
    assert later, "live deltas came through the channel layer"
    assert [f["seq"] for f in later] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(later)))
    final = frames[-1]["message"]["content"]
    assert snapshot["content"] + "".join(f["text"] for f in later) == final == got[-1]["message"]["content"]

    # The next turn reaches the other process from its first frame.
    await here.send_message("/echo through redis", conversation=conversation_id)
    nxt = await there.until_finished()
    assert [f["type"] for f in nxt][:2] == ["message.created", "generation.started"]
    assert nxt[-1]["message"]["content"] == "through redis"
    await here.until_finished()
    await wait_idle()


@needs_redis
async def test_stop_from_another_process_reaches_the_owner(org_a, member_secret, ws_connect, settings, other_process):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    _, other_app = other_process
    secret = await member_secret(org_a.member)
    here = await ws_connect(secret=secret)
    await here.send_message("/long")
    frames = await here.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 2)
    answer_id = frames[2]["message"]["id"]
    there = await ws_connect(secret=secret, app=other_app)
    await there.send({"type": "conversation.subscribe", "conversation": frames[0]["conversation"]["id"]})
    await there.until_type("message.snapshot")
    await there.send({"type": "generation.stop", "message": answer_id})
    frames += await here.until_finished()
    assert frames[-1]["message"]["status"] == "cancelled"
    assert joined_deltas(frames, answer_id) == frames[-1]["message"]["content"]
    got = await there.until_finished()
    assert got[-1]["message"]["status"] == "cancelled"
    await wait_idle()


@needs_redis
async def test_own_frames_coming_back_through_redis_are_ignored(org_a, member_secret, ws_connect, settings):
    """The owner publishes to the group it also listens on; its followers must not get frames twice."""
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.002
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/echo once only")
    frames = await client.until_finished()
    assert await client.nothing_pending()
    kinds = [f["type"] for f in frames]
    assert kinds.count("message.created") == 1 and kinds.count("generation.finished") == 1
    await wait_idle()


async def test_stop_closes_the_provider_stream(org_a, member_secret, ws_connect, fake_provider, monkeypatch):
    """generation.stop cancels the task and closes the upstream stream, so the provider stops (and bills)."""
    import llm.chat
    from tests.fakeprovider import reply

    closed = []
    real = llm.chat.stream_chat

    def recording(request, **kwargs):
        stream = real(request, **kwargs)
        original = stream.aclose

        async def aclose():
            closed.append(request.request_id)
            await original()

        stream.aclose = aclose
        return stream

    monkeypatch.setattr(llm.chat, "stream_chat", recording)
    fake_provider.openai.script([reply(*[f"w{i} " for i in range(200)], delta_delay=0.02)])
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("Go on", model="gpt-5.2-instant")
    frames = await client.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 2)
    answer_id = frames[2]["message"]["id"]
    await client.send({"type": "generation.stop", "message": answer_id})
    frames += await client.until_finished()
    finished = frames[-1]["message"]
    assert finished["status"] == "cancelled" and finished["content"].startswith("w0 w1")
    assert joined_deltas(frames, answer_id) == finished["content"]
    assert closed == [answer_id]
    entries = await ledger_for(answer_id)  # what was generated is billed (counted by Parley: estimated)
    assert len(entries) == 1 and entries[0].output_tokens > 0 and entries[0].cost > 0
    await wait_idle()
