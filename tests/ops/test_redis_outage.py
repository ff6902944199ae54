"""Degrade, don't fail: Parley with its Redis stopped, hung and started again.

Each test starts a Redis of its own on a free port (`redis-server --save '' --appendonly no`) and points
the cache (config.cache.ResilientRedisCache), the channel layer (the pub/sub layer) and the rate limiter
at it, so it can stop it (`redis-cli shutdown nosave`), hang it (SIGSTOP) and start it again without
touching the suite's Redis. The application runs in process: Django's async client for HTTP, Channels'
WebsocketCommunicator for the websocket, and two hubs with their own process ids on the same pub/sub
layer for two Daphne processes.

While Redis is down: API keys are checked against the database (`/v1` and REST answer 200, a revoked
key is refused, and stays refused when Redis returns), a websocket connects and chats on its process,
and the rate limiter's per-process windows still refuse past the limit. After a channel-layer blip,
the followers of a running answer on both processes get a fresh `message.snapshot` and then its
deltas without a gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from django.urls import path
from django.utils import timezone

from accounts import selectors
from accounts.errors import Unauthenticated
from accounts.models import ApiKey, Tier
from accounts.ws import WebsocketAuthStack
from billing import limits
from billing.reservations import rate_limit_policies_forget
from config.asgi import application
from conversations import hub as hub_module
from conversations.consumers import ChatConsumer
from tests.conversations.conftest import Client, bearer_headers, joined_deltas, wait_idle

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throwaway redis-server this test may stop, hang and start again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.paused = False

    def _ping(self) -> bool:
        ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True, timeout=5)
        return ping.stdout.strip() == "PONG"

    def start(self) -> None:
        subprocess.run(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "yes", "--dir", str(self.dir), "--pidfile", str(self.dir / "redis.pid"),
             "--logfile", str(self.dir / "redis.log")],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not self._ping():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self, *, keep_data: bool = False) -> None:
        """Shut it down, dropping its data (as a restart without persistence does), or saving it for
        the next start (`keep_data`: a restart with persistence, or an outage of the network)."""
        how = "save" if keep_data else "nosave"
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", how], capture_output=True, timeout=5)
        deadline = time.monotonic() + 10
        while self._listening():
            assert time.monotonic() < deadline, "redis-server did not stop"
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def keys(self, pattern: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), "keys", pattern], capture_output=True, text=True).stdout

    def pause(self) -> None:
        """Hang it (SIGSTOP): connections are accepted by the kernel and never answered; data is kept."""
        os.kill(self._pid(), signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)
        self.paused = False

    def _pid(self) -> int:
        return int((self.dir / "redis.pid").read_text().strip())

    def close(self) -> None:
        if self.paused:
            self.resume()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# The settings the lead puts in config/settings.py (see the report), pointed at this test's Redis.
def cache_settings(url: str) -> dict:
    return {
        "default": {
            "BACKEND": "config.cache.ResilientRedisCache",
            "LOCATION": url,
            "KEY_PREFIX": "parley",
        }
    }


def layer_settings(url: str) -> dict:
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}], "prefix": f"parley-{uuid.uuid4().hex[:6]}"},
        }
    }


@pytest.fixture(autouse=True)
def fast_demo(settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.001


@pytest.fixture(autouse=True)
async def hub_cleanup():
    yield
    await wait_idle()
    await hub_module.default().aclose()


@pytest.fixture
def member_secret(api_key_factory):
    async def make(membership) -> str:
        return (await database_sync_to_async(api_key_factory)(membership))[1]

    return make


async def ws_open(*, secret: str, app=None) -> Client:
    communicator = WebsocketCommunicator(app or application, "/ws/chat/", headers=bearer_headers(secret))
    connected, code = await communicator.connect(timeout=10)
    assert connected, f"refused with {code}"
    return Client(communicator)


@pytest.fixture
def redis_server():
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def on_private_redis(settings, redis_server):
    """The cache, the channel layer and the rate limiter of this process on the test's own Redis."""
    settings.REDIS_URL = redis_server.url
    settings.CACHES = cache_settings(redis_server.url)
    settings.CHANNEL_LAYERS = layer_settings(redis_server.url)
    settings.BILLING_RATELIMIT_REDIS_URL = redis_server.url
    selectors._keys.clear()
    selectors._members.clear()
    rate_limit_policies_forget()
    yield redis_server
    limits.limiter().forget()
    selectors._keys.clear()
    selectors._members.clear()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _v1_body(content: str = "/echo still here") -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": content}]}


# --- HTTP with an API key -------------------------------------------------------------------------


async def test_v1_and_rest_with_an_api_key_answer_while_redis_is_down(org_a, member_secret, on_private_redis):
    secret = await member_secret(org_a.member)
    client = AsyncClient()
    up = await client.post("/v1/chat/completions", _v1_body(), content_type="application/json", headers=bearer(secret))
    assert up.status_code == 200, up.content[:300]

    on_private_redis.stop()
    started = time.monotonic()
    for attempt in range(3):  # the first meets the dead connection, the next ones skip Redis
        v1 = await client.post("/v1/chat/completions", _v1_body(), content_type="application/json", headers=bearer(secret))
        assert v1.status_code == 200, v1.content[:300]
        assert json.loads(v1.content)["choices"][0]["message"]["content"] == "still here"
        rest = await client.get("/api/v1/conversations/", headers=bearer(secret))
        assert rest.status_code == 200, rest.content[:300]
        # (streamed: a non-streamed send waits in the view's thread, which Django's test client shares
        # with the turn's own database calls)
        sent = await client.post(
            "/api/v1/conversations/send/", {"content": f"/echo turn {attempt}", "stream": True},
            content_type="application/json", headers=bearer(secret),
        )
        assert sent.status_code == 201
        events = [json.loads(line[6:]) for line in (b"".join([c async for c in sent.streaming_content])).decode().splitlines()
                  if line.startswith("data: ")]
        assert events[-1]["type"] == "generation.finished", events[-1]
        assert events[-1]["message"]["content"] == f"turn {attempt}"
    assert time.monotonic() - started < 20
    # a wrong key is still refused (the database is asked, not a cache)
    wrong = await client.get("/api/v1/conversations/", headers=bearer(secret + "x"))
    assert wrong.status_code == 401

    on_private_redis.start()
    again = await client.post("/v1/chat/completions", _v1_body(), content_type="application/json", headers=bearer(secret))
    assert again.status_code == 200
    await wait_idle()


# --- the cache ----------------------------------------------------------------------------------


def _resilient_cache(url: str, **options):
    from config.cache import ResilientRedisCache

    return ResilientRedisCache(url, {"KEY_PREFIX": f"t{uuid.uuid4().hex[:6]}", "OPTIONS": options})


def test_every_cache_operation_answers_as_a_miss_while_redis_is_down(redis_server, caplog):
    cache = _resilient_cache(redis_server.url, outage_seconds=0.3)
    assert cache.set("a", 1) is None and cache.get("a") == 1 and cache.incr("a") == 2

    redis_server.stop()
    caplog.set_level(logging.WARNING, logger="config.cache")
    assert cache.get("a") is None and cache.get("a", "dflt") == "dflt"
    assert cache.set("b", 2) is False
    assert cache.add("b", 2) is False
    assert cache.delete("a") is False and cache.touch("a") is False and cache.has_key("a") is False
    assert cache.get_many(["a", "b"]) == {}
    assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]  # Django's "these keys failed"
    assert cache.delete_many(["a"]) is False and cache.clear() is False
    with pytest.raises(ValueError):
        cache.incr("a")
    with pytest.raises(ValueError):
        cache.decr("a")
    assert cache.get_or_set("c", lambda: "computed") == "computed"
    warnings = [r for r in caplog.records if r.name == "config.cache"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # at most once per outage window
    assert f"127.0.0.1:{redis_server.port}" in warnings[0].getMessage() and "redis://" not in warnings[0].getMessage()

    redis_server.start()  # empty: restarted without persistence
    deadline = time.monotonic() + 5
    while cache.set("d", 4) is False:  # answers again once the outage window has passed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cache.get("d") == 4 and cache.get("a") is None


def test_a_password_in_the_url_is_never_logged(redis_server, caplog):
    cache = _resilient_cache(f"redis://:s3cret-pass@127.0.0.1:{_free_port()}/0")
    caplog.set_level(logging.WARNING, logger="config.cache")
    assert cache.get("x") is None
    assert caplog.records and all("s3cret" not in r.getMessage() for r in caplog.records)


def test_a_hung_redis_costs_one_call_half_a_second_then_nothing(redis_server):
    cache = _resilient_cache(redis_server.url, outage_seconds=5)
    assert cache.set("a", 1) is None
    redis_server.pause()
    started = time.monotonic()
    assert cache.get("a") is None
    first = time.monotonic() - started
    assert first < 0.8, first  # 2 × 0.25 s (one retry on a new connection), plus slack for a busy machine
    started = time.monotonic()
    for _ in range(20):
        assert cache.get("a") is None and cache.set("a", 2) is False
    assert time.monotonic() - started < 0.1  # Redis is not asked again within outage_seconds
    redis_server.resume()


def test_the_first_call_after_a_restart_succeeds_on_a_fresh_connection(redis_server):
    cache = _resilient_cache(redis_server.url)
    assert cache.set("a", 1) is None  # a pooled connection is open now
    redis_server.stop()
    redis_server.start()
    assert cache.set("a", 2) is None and cache.get("a") == 2  # the closed connection is replaced, no miss


# --- API keys: the database decides while the generation mark cannot be read -----------------------


def _authenticates(secret: str) -> bool:
    try:
        selectors.api_key_authenticate(secret=secret)
    except Unauthenticated:
        return False
    return True


def _wait_for_cache(url: str, seconds: float = 10) -> None:
    """Until this process's cache answers again (past its outage window)."""
    from django.core.cache import cache

    deadline = time.monotonic() + seconds
    while cache.set("ops:probe", 1, 5) is False:
        assert time.monotonic() < deadline, f"the cache on {url} did not answer again"
        time.sleep(0.05)


def test_keys_are_checked_against_the_database_while_the_mark_cannot_be_read(org_a, api_key_factory, on_private_redis):
    key, secret = api_key_factory(org_a.member)
    assert _authenticates(secret)  # remembered under the current mark
    on_private_redis.stop()
    assert _authenticates(secret)  # Redis down: the database says the key is good
    assert not _authenticates(secret + "x")
    # Revoked by another process, whose forget-everything mark cannot reach this one (no signal here):
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert not _authenticates(secret)  # nothing remembered is trusted while the mark cannot be read
    on_private_redis.start()  # empty: the mark went with Redis's data
    _wait_for_cache(on_private_redis.url)
    assert not _authenticates(secret)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)
    assert _authenticates(secret)  # what was remembered during the outage is not trusted now either


def test_a_key_revoked_while_redis_is_down_stays_revoked_when_it_returns(org_a, api_key_factory, on_private_redis):
    """Redis down (its data kept, so the old mark comes back with it) while a key is revoked: another
    process that remembers the key under the old mark must not let it work once Redis answers."""
    from accounts.services import api_key_revoke

    key, secret = api_key_factory(org_a.member)
    assert _authenticates(secret)
    other_process_memory = dict(selectors._keys)  # what another process remembers: the key, valid, old mark
    on_private_redis.stop(keep_data=True)
    api_key_revoke(membership=org_a.owner, key_id=key.id)  # its new mark cannot be written now
    assert not _authenticates(secret)
    selectors._keys.update(other_process_memory)
    assert not _authenticates(secret)  # the mark cannot be read: the database decides
    on_private_redis.start()  # with the old mark
    _wait_for_cache(on_private_redis.url)
    time.sleep(selectors.MARK_RETRY_SECONDS * 3)  # the retry thread writes the new mark
    remembered = selectors._keys.get(key.hashed_secret) or other_process_memory[key.hashed_secret]
    selectors._keys[key.hashed_secret] = other_process_memory[key.hashed_secret]
    assert remembered[0] > time.monotonic(), "the remembered key must still be fresh for this test to mean anything"
    assert not _authenticates(secret)


def test_a_session_member_is_reread_while_the_mark_cannot_be_read(org_a, on_private_redis):
    from accounts.errors import PermissionDenied
    from accounts.models import Membership

    member = org_a.member
    assert selectors.membership_refresh(membership=member)[0].pk == member.pk
    on_private_redis.stop()
    assert selectors.membership_refresh(membership=member)[0].pk == member.pk
    Membership.objects.filter(pk=member.pk).delete()
    with pytest.raises(PermissionDenied):
        selectors.membership_refresh(membership=member)


# --- the websocket on one process -------------------------------------------------------------------


async def test_a_websocket_connects_and_chats_while_redis_is_down(org_a, member_secret, on_private_redis):
    secret = await member_secret(org_a.member)
    on_private_redis.stop()
    client = await ws_open(secret=secret)
    await client.send_message("/echo one")
    frames = await client.until_finished()
    assert frames[-1]["message"]["status"] == "complete" and frames[-1]["message"]["content"] == "one"
    conversation_id = frames[0]["conversation"]["id"]
    answer_id = frames[-1]["message"]["id"]
    assert joined_deltas(frames, answer_id) == "one"
    await client.send_message("/echo two", conversation=conversation_id)
    second = await client.until_finished()
    assert second[-1]["message"]["content"] == "two"
    # a second socket of this process follows the conversation
    other = await ws_open(secret=secret)
    await other.send({"type": "conversation.subscribe", "conversation": conversation_id})
    got = await other.until_finished()
    assert got[-1]["message"]["content"] == "two"
    await wait_idle()


# --- rate limits -------------------------------------------------------------------------------------


@database_sync_to_async
def _set_requests_per_minute(slug: str, rpm: int) -> None:
    Tier.objects.filter(slug=slug).update(requests_per_minute=rpm)
    rate_limit_policies_forget()


async def test_rate_limits_still_refuse_past_the_limit_while_redis_is_down(
    org_a, org_b, member_secret, on_private_redis, monkeypatch, caplog
):
    monkeypatch.setattr(limits, "REDIS_RETRY_SECONDS", 0.5)
    await _set_requests_per_minute("pro", 3)
    secret = await member_secret(org_a.member)
    client = AsyncClient()
    ws = await ws_open(secret=secret)
    on_private_redis.stop()
    caplog.set_level(logging.WARNING, logger="billing.limits")
    statuses = []
    for _ in range(4):
        response = await client.post("/v1/chat/completions", _v1_body(), content_type="application/json", headers=bearer(secret))
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]  # this process's own window
    assert response.headers["Retry-After"] and json.loads(response.content)["error"]["code"] == "rate_limit_exceeded"
    assert "Redis unreachable" in caplog.text
    # the websocket's turns are refused by the same window
    await ws.send_message("/echo x")
    refused = await ws.receive()
    assert refused["type"] == "error" and refused["code"] == "rate_limited" and refused["retry_after"] >= 1
    await ws.close()

    on_private_redis.start()
    await asyncio.sleep(0.6)  # past the limiter's retry time
    other = await member_secret(org_b.member)
    response = await client.post("/v1/chat/completions", _v1_body(), content_type="application/json", headers=bearer(other))
    assert response.status_code == 200
    assert limits.limiter().using_redis  # back on the shared windows
    assert f"parley:rl:org:{org_b.organization.id}:req" in await asyncio.to_thread(on_private_redis.keys, "parley:rl:*")
    await wait_idle()


# --- the channel layer: two processes, one pub/sub layer -------------------------------------------


@pytest.fixture
async def process_factory(settings, on_private_redis):
    """`process_factory("a")` → (hub, websocket app) of a simulated Daphne process with its own Redis
    connections and process id, on the test's Redis."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    made = []

    def make(name: str):
        layer = RedisPubSubChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
        hub = hub_module.Hub(process_id=name, layer=layer)
        made.append((hub, layer))
        # A subclass, not as_asgi(hub=...): Channels' consumers drop unknown init kwargs.
        consumer = type(f"ChatConsumer_{name}", (ChatConsumer,), {"hub": hub})
        return hub, WebsocketAuthStack(URLRouter([path("ws/chat/", consumer.as_asgi())]))

    yield make
    await wait_idle()
    for hub, layer in made:
        await hub.aclose()
        await layer.flush()


def as_a_client_sees(frames: list[dict], message_id: str) -> str:
    """The text a client builds from these frames (as static/js/chat.js does), failing on any gap in seq."""
    content, seq = None, 0
    for frame in frames:
        if frame.get("message") == message_id and frame["type"] == "message.snapshot":
            content, seq = frame["content"], frame["seq"]
        elif frame.get("message") == message_id and frame["type"] == "delta":
            if frame["seq"] <= seq:
                continue  # seen already
            assert content is not None or frame["seq"] == 1, "a delta before any snapshot must be the first"
            assert frame["seq"] == seq + 1, f"a gap was passed on: seq {seq} then {frame['seq']} in {_outline(frames)}"
            content, seq = (content or "") + frame["text"], frame["seq"]
    return content or ""


def _outline(frames: list[dict]) -> str:
    return " ".join(f"{f['type'].split('.')[-1][:5]}{f.get('seq', '')}" for f in frames)


def _snapshots(frames: list[dict], message_id: str) -> list[dict]:
    return [f for f in frames if f["type"] == "message.snapshot" and f["message"] == message_id]


async def test_followers_on_both_processes_get_a_snapshot_after_a_channel_layer_blip(
    org_a, member_secret, settings, on_private_redis, process_factory
):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.02  # /long streams for ~8 s
    hub_a, app_a = process_factory("process-a")
    _hub_b, app_b = process_factory("process-b")
    secret = await member_secret(org_a.member)
    here = await ws_open(secret=secret, app=app_a)
    await here.send_message("/long")
    seen_here = await here.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
    conversation_id, answer_id = seen_here[0]["conversation"]["id"], seen_here[2]["message"]["id"]

    there = await ws_open(secret=secret, app=app_b)
    await there.send({"type": "conversation.subscribe", "conversation": conversation_id})
    seen_there = await there.until_type("message.snapshot")
    seen_there += await there.receive_until(lambda f: f["type"] == "delta")  # live deltas through Redis
    generation = hub_a.generation_local(uuid.UUID(answer_id))
    assert generation is not None and generation.remote

    await asyncio.to_thread(on_private_redis.stop)
    seq_at_blip = generation.seq
    await asyncio.sleep(1.0)  # the deltas of this second cannot reach process B
    assert generation.seq > seq_at_blip + 3, "the answer streams on while the layer is down"
    await asyncio.to_thread(on_private_redis.start)

    seen_here += await here.until_finished(answer_id, wait=60)
    seen_there += await there.until_finished(answer_id, wait=60)
    final = seen_here[-1]["message"]
    assert final["status"] == "complete" and seen_there[-1]["message"]["content"] == final["content"]
    for who, seen in (("the other process", seen_there), ("this process", seen_here)):
        fresh = [s for s in _snapshots(seen, answer_id) if s["seq"] > seq_at_blip]
        assert fresh, f"{who}: no snapshot after the blip"
        assert as_a_client_sees(seen, answer_id) == final["content"], who
    after = seen_there[seen_there.index(next(s for s in _snapshots(seen_there, answer_id) if s["seq"] > seq_at_blip)):]
    assert [f for f in after if f["type"] == "delta"], "live deltas reach the other process again after the blip"
    await here.close()
    await there.close()


async def test_a_join_that_failed_while_redis_was_down_is_retried(org_a, member_secret, on_private_redis, process_factory):
    _hub_a, app_a = process_factory("process-a")
    hub_b, app_b = process_factory("process-b")
    secret = await member_secret(org_a.member)
    here = await ws_open(secret=secret, app=app_a)
    await here.send_message("/echo first")
    conversation_id = (await here.until_finished())[0]["conversation"]["id"]

    there = await ws_open(secret=secret, app=app_b)
    await asyncio.to_thread(on_private_redis.stop)
    await there.send({"type": "conversation.subscribe", "conversation": conversation_id})
    assert (await there.until_finished())[-1]["message"]["content"] == "first"  # from the database
    assert uuid.UUID(conversation_id) not in hub_b._joined
    await asyncio.to_thread(on_private_redis.start)
    deadline = time.monotonic() + 15
    while uuid.UUID(conversation_id) not in hub_b._joined:  # noqa: ASYNC110 - the repair loop joins
        assert time.monotonic() < deadline, "the failed join was not retried"
        await asyncio.sleep(0.1)

    await here.send_message("/echo second", conversation=conversation_id)
    got = await there.until_finished(wait=30)
    assert [f["type"] for f in got][:2] == ["message.created", "generation.started"], _outline(got)
    assert got[-1]["message"]["content"] == "second"
    await here.until_finished()
    await here.close()
    await there.close()


async def test_a_stop_and_a_subscribe_for_another_process_wait_for_the_layer(
    org_a, member_secret, settings, on_private_redis, process_factory
):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.05  # /long streams for ~20 s: the outage below must end before it does
    _hub_a, app_a = process_factory("process-a")
    _hub_b, app_b = process_factory("process-b")
    secret = await member_secret(org_a.member)
    here = await ws_open(secret=secret, app=app_a)
    await here.send_message("/long")
    seen = await here.receive_until(lambda f: f["type"] == "delta" and f["seq"] >= 2)
    conversation_id, answer_id = seen[0]["conversation"]["id"], seen[2]["message"]["id"]
    there = await ws_open(secret=secret, app=app_b)
    await asyncio.to_thread(on_private_redis.stop)
    await there.send({"type": "conversation.subscribe", "conversation": conversation_id})
    caught_up = await there.until_type("message.snapshot")  # the saved text: the owner cannot be asked
    assert caught_up[0]["type"] == "generation.started"
    await there.send({"type": "generation.stop", "message": answer_id})  # cannot reach process A now
    await there.send({"type": "ping"})
    assert (await there.until_type("pong"))[-1]["type"] == "pong"  # the socket is fine
    await asyncio.to_thread(on_private_redis.start)
    seen += await here.until_finished(answer_id, wait=60)
    got = await there.until_finished(answer_id, wait=60)
    assert seen[-1]["message"]["status"] == "cancelled"  # the stop was sent once the layer answered
    assert got[-1]["message"]["content"] == seen[-1]["message"]["content"]
    as_a_client_sees(caught_up + got, answer_id)  # no gap passed on
    await here.close()
    await there.close()
