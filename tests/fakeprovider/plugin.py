"""pytest plugin: the `fake_provider` fixture (registered in tests/conftest.py via pytest_plugins).

One server per test session; each test gets it reset (empty scripts, no recorded requests) with the
Django settings pointing every vendor at it with fake keys, and short retry delays and timeouts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeProviderServer

FAKE_KEYS = {
    "OPENAI_API_KEY": "sk-fake-openai-key-0123456789",
    "ANTHROPIC_API_KEY": "sk-ant-fake-anthropic-key-0123456789",
    "GEMINI_API_KEY": "fake-gemini-key-0123456789",
}


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProviderServer]:
    server = FakeProviderServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_provider(fake_provider_server: FakeProviderServer, settings) -> Iterator[FakeProviderServer]:
    """The fake provider, reset, with OPENAI/ANTHROPIC/GEMINI settings pointing at it."""
    server = fake_provider_server
    server.reset()
    for name, value in FAKE_KEYS.items():
        setattr(settings, name, value)
    settings.OPENAI_BASE_URL = server.openai_base_url
    settings.ANTHROPIC_BASE_URL = server.anthropic_base_url
    settings.GEMINI_BASE_URL = server.gemini_base_url
    # fast retries and short timeouts, so error paths take milliseconds
    settings.PARLEY_LLM_RETRY_BASE_DELAY = 0.001
    settings.PARLEY_LLM_RETRY_MAX_DELAY = 0.01
    settings.PARLEY_LLM_CONNECT_TIMEOUT = 2.0
    settings.PARLEY_LLM_FIRST_TOKEN_TIMEOUT = 5.0
    settings.PARLEY_LLM_IDLE_TIMEOUT = 5.0
    yield server
    server.release_stalls()


@pytest.fixture(autouse=True)
def _llm_registry_rows_fresh() -> Iterator[None]:
    """Every test starts with the model registry read from its own database.

    llm.registry keeps the rows in memory for a few seconds; a transactional test's flush sends no
    signal, so without this a model row one test created could outlive its database.
    """
    from llm.registry import rows_invalidate

    rows_invalidate()
    yield
    rows_invalidate()
