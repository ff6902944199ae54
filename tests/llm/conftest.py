import uuid

import pytest

from llm.types import ChatRequest, Message


@pytest.fixture(autouse=True)
def _fast_demo(settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0
    settings.PARLEY_LLM_RETRY_BASE_DELAY = 0.001
    settings.PARLEY_LLM_RETRY_MAX_DELAY = 0.01


@pytest.fixture
def make_request():
    def make(model: str = "demo", *messages: Message | str, **options) -> ChatRequest:
        msgs = tuple(Message(role="user", content=m) if isinstance(m, str) else m for m in messages) or (
            Message(role="user", content="Hello"),
        )
        options.setdefault("request_id", f"req-{uuid.uuid4()}")
        return ChatRequest(model=model, messages=msgs, **options)

    return make


async def collect(stream):
    events = []
    async for event in stream:
        events.append(event)
    return events
