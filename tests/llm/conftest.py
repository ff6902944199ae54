import uuid

import pytest

from llm.types import ChatRequest, Message


@pytest.fixture(autouse=True)
def _fast_llm(settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0
    settings.PARLEY_LLM_RETRY_BASE_DELAY = 0.001
    settings.PARLEY_LLM_RETRY_MAX_DELAY = 0.01
    settings.PARLEY_LLM_MAX_ATTEMPTS = 3


@pytest.fixture
def make_request():
    def make(model: str = "demo", *messages: Message | str, **options) -> ChatRequest:
        msgs = tuple(Message(role="user", content=m) if isinstance(m, str) else m for m in messages) or (
            Message(role="user", content="Hello"),
        )
        options.setdefault("request_id", f"req-{uuid.uuid4()}")
        return ChatRequest(model=model, messages=msgs, **options)

    return make


@pytest.fixture
def no_fallbacks(monkeypatch):
    """An error ends the stream on its own model: the registry's chain is cut to the model itself.

    (Editing the rows would need a transactional test: the chain is read in another thread.)
    """
    from llm import chat

    real = chat._resolve_chain

    async def only_the_model(request):
        return (await real(request))[:1]

    monkeypatch.setattr(chat, "_resolve_chain", only_the_model)
