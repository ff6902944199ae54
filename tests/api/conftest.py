"""Fixtures for API tests: a live Parley (the real ASGI app under Uvicorn, in a thread) on the test database.

The send, SSE, stop and OpenAI-compatible endpoints start generation tasks on the server's event
loop, so they are exercised over real sockets, as programs use them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
import uvicorn


@pytest.fixture(autouse=True)
def fast_demo(settings):
    """The demo model streams quickly in tests (it paces itself by this setting)."""
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.001
    return settings


class LiveServer:
    def __init__(self) -> None:
        from config.asgi import application

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            application, log_level="warning", lifespan="off", loop="asyncio", http="h11", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def parley_server(django_db_serialized_rollback, transactional_db) -> Iterator[LiveServer]:
    server = LiveServer().start()
    yield server
    server.stop()


@pytest.fixture
def http(parley_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=parley_server.url, timeout=30) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body (comments skipped)."""
    events = []
    for block in text.split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if event is not None or data:
            events.append((event, "\n".join(data)))
    return events


def sse_frames(text: str) -> list[dict]:
    return [json.loads(data) for _, data in parse_sse(text)]


@pytest.fixture
def key_a(org_a, api_key_factory) -> str:
    """A's member's API key secret."""
    return api_key_factory(org_a.member)[1]


@pytest.fixture
def key_b(org_b, api_key_factory) -> str:
    return api_key_factory(org_b.member)[1]


@pytest.fixture(scope="session", autouse=True)
def close_server_connections(django_db_setup, django_db_blocker):
    """After the API tests, close the pooled connections the live servers' threads opened, so the
    test database can be dropped (they are shared by every thread of the process)."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all():
            close_pool = getattr(connection, "close_pool", None)
            if close_pool is not None and connection.settings_dict.get("OPTIONS", {}).get("pool"):
                close_pool()
