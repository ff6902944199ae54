"""Settings of the llm layer, read from Django settings with defaults (env vars override the defaults).

Read at call time (not import time), so tests can change them with pytest-django's `settings`.

    PARLEY_DEMO_TOKEN_DELAY          seconds per demo token (default 0.05)
    PARLEY_LLM_CONNECT_TIMEOUT       seconds to open the connection (default 10)
    PARLEY_LLM_FIRST_TOKEN_TIMEOUT   seconds from the request to the first event (default 60)
    PARLEY_LLM_IDLE_TIMEOUT          seconds allowed between two events of a stream (default 30)
    PARLEY_LLM_MAX_ATTEMPTS          attempts per model before falling back (default 3)
    PARLEY_LLM_RETRY_BASE_DELAY      first backoff ceiling, doubled per attempt (default 0.5)
    PARLEY_LLM_RETRY_MAX_DELAY       backoff ceiling, and the longest Retry-After honoured (default 20)
    PARLEY_LLM_CALL_LOG              write llm.models.ProviderCall rows (default on)
    PARLEY_LLM_CACHE_MIN_CHARS       Anthropic: cache the system prompt from this length (default 4000)
    PARLEY_LLM_REGISTRY_CACHE_SECONDS  how long a turn may reuse the registry rows in memory (default 5)
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

TIKTOKEN_DIR = Path(__file__).resolve().parent / "data" / "tiktoken"

_DEFAULTS: dict[str, float] = {
    "PARLEY_DEMO_TOKEN_DELAY": 0.05,
    "PARLEY_LLM_CONNECT_TIMEOUT": 10.0,
    "PARLEY_LLM_FIRST_TOKEN_TIMEOUT": 60.0,
    "PARLEY_LLM_IDLE_TIMEOUT": 30.0,
    "PARLEY_LLM_MAX_ATTEMPTS": 3,
    "PARLEY_LLM_RETRY_BASE_DELAY": 0.5,
    "PARLEY_LLM_RETRY_MAX_DELAY": 20.0,
    "PARLEY_LLM_CACHE_MIN_CHARS": 4000,
    "PARLEY_LLM_REGISTRY_CACHE_SECONDS": 5.0,
}


def number(name: str) -> float:
    value = getattr(settings, name, None)
    if value is None:
        env = os.environ.get(name, "").strip()
        value = float(env) if env else _DEFAULTS[name]
    return float(value)


def demo_token_delay() -> float:
    return number("PARLEY_DEMO_TOKEN_DELAY")


def connect_timeout() -> float:
    return number("PARLEY_LLM_CONNECT_TIMEOUT")


def first_token_timeout() -> float:
    return number("PARLEY_LLM_FIRST_TOKEN_TIMEOUT")


def idle_timeout() -> float:
    return number("PARLEY_LLM_IDLE_TIMEOUT")


def max_attempts() -> int:
    return max(1, int(number("PARLEY_LLM_MAX_ATTEMPTS")))


def retry_base_delay() -> float:
    return number("PARLEY_LLM_RETRY_BASE_DELAY")


def retry_max_delay() -> float:
    return number("PARLEY_LLM_RETRY_MAX_DELAY")


def cache_min_chars() -> int:
    return int(number("PARLEY_LLM_CACHE_MIN_CHARS"))


def registry_cache_seconds() -> float:
    return number("PARLEY_LLM_REGISTRY_CACHE_SECONDS")


def call_log_enabled() -> bool:
    value = getattr(settings, "PARLEY_LLM_CALL_LOG", None)
    if value is None:
        return os.environ.get("PARLEY_LLM_CALL_LOG", "1").strip().lower() not in {"0", "false", "no", "off"}
    return bool(value)


def provider_key(provider: str, env_name: str = "") -> str:
    """The API key of a provider: a named env var (openai_compatible rows), else the settings."""
    if env_name:
        return os.environ.get(env_name, "").strip() or str(getattr(settings, env_name, "") or "")
    name = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}.get(provider)
    return str(getattr(settings, name, "") or "") if name else ""


def provider_base_url(provider: str) -> str:
    name = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL", "gemini": "GEMINI_BASE_URL"}.get(provider)
    return str(getattr(settings, name, "") or "") if name else ""
