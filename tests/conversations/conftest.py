"""Fixtures for conversations tests: websocket clients over the real ASGI stack, frame helpers."""

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application


@pytest.fixture(autouse=True)
def fast_demo(settings):
    """The demo model streams quickly in tests (it paces itself by this setting)."""
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.001
    return settings


@pytest.fixture(autouse=True)
async def hub_cleanup():
    """Each test runs its own event loop: let the process hub stop listening at the end of it."""
    yield
    from conversations import hub

    await wait_idle()
    await hub.default().aclose()


class Client:
    """A websocket client with helpers to read frames until something happens."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.frames: list[dict] = []

    async def send(self, frame: dict | str) -> None:
        if isinstance(frame, str):
            await self.communicator.send_to(text_data=frame)
        else:
            await self.communicator.send_json_to(frame)

    async def receive(self, wait: float = 10) -> dict:
        frame = json.loads(await self.communicator.receive_from(timeout=wait))
        self.frames.append(frame)
        return frame

    async def receive_until(self, predicate, wait: float = 20) -> list[dict]:
        """Frames up to and including the first one that matches."""
        got = []
        async with asyncio.timeout(wait):
            while True:
                frame = await self.receive(wait=wait)
                got.append(frame)
                if predicate(frame):
                    return got

    async def until_finished(self, message_id: str | None = None, wait: float = 20) -> list[dict]:
        return await self.receive_until(
            lambda f: f["type"] == "generation.finished" and (message_id is None or f["message"]["id"] == message_id),
            wait=wait,
        )

    async def until_type(self, kind: str, wait: float = 20) -> list[dict]:
        return await self.receive_until(lambda f: f["type"] == kind, wait=wait)

    async def send_message(self, content: str, conversation=None, **extra) -> str:
        client_id = extra.pop("client_id", None) or str(uuid.uuid4())
        await self.send(
            {"type": "message.send", "conversation": conversation, "content": content, "client_id": client_id, **extra}
        )
        return client_id

    async def nothing_pending(self) -> bool:
        return await self.communicator.receive_nothing(timeout=0.2)

    async def close(self) -> None:
        await self.communicator.disconnect()


def joined_deltas(frames: list[dict], message_id: str) -> str:
    deltas = [f for f in frames if f["type"] == "delta" and f["message"] == message_id]
    assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1)), "seq must be 1, 2, 3 … without gaps"
    return "".join(f["text"] for f in deltas)


def bearer_headers(secret: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {secret}".encode())]


@pytest.fixture
def ws_connect():
    """`await ws_connect(secret=...)` or `await ws_connect(headers=...)` → connected Client."""
    opened: list[Client] = []

    async def connect(*, secret: str | None = None, headers=None, app=None, expect_refused: bool = False):
        headers = list(headers or [])
        if secret is not None:
            headers += bearer_headers(secret)
        communicator = WebsocketCommunicator(app or application, "/ws/chat/", headers=headers)
        connected, code = await communicator.connect(timeout=10)
        if expect_refused:
            assert not connected
            return code
        assert connected, f"refused with {code}"
        client = Client(communicator)
        opened.append(client)
        return client

    yield connect


@pytest.fixture
def member_secret(api_key_factory):
    """`await member_secret(membership)` → an API key secret acting as that member."""

    async def make(membership) -> str:
        _key, secret = await database_sync_to_async(api_key_factory)(membership)
        return secret

    return make


async def wait_idle() -> None:
    """Wait for every call and generation task of this process to end (no writes after a test)."""
    from conversations import engine, generation

    async with asyncio.timeout(10):
        while engine._tasks or generation._tasks:  # noqa: ASYNC110 - the registries are plain sets
            await asyncio.sleep(0.01)


@database_sync_to_async
def db(fn, *args, **kwargs):
    return fn(*args, **kwargs)


@database_sync_to_async
def ledger_for(message_id) -> list:
    """The billing ledger rows of one answer."""
    from billing.models import LedgerEntry

    return list(LedgerEntry.objects.filter(message_id=message_id))
