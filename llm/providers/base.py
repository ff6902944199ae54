"""What the adapters share: error classification, secret redaction, Retry-After, per-loop clients."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx2

from llm import conf
from llm import errors as e

# Things that look like API keys: OpenAI/Anthropic "sk-…", Google "AIza…", bearer tokens.
_KEY_PATTERNS = re.compile(
    r"(sk-(?:ant-)?[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{10,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)
_MAX_MESSAGE = 500


def redact(text: str, *secrets: str) -> str:
    """The text without API keys: the configured ones, and anything shaped like a key."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    for provider in ("openai", "anthropic", "gemini"):
        key = conf.provider_key(provider)
        if key and len(key) >= 6:
            text = text.replace(key, "[redacted]")
    return _KEY_PATTERNS.sub("[redacted]", text)[:_MAX_MESSAGE]


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After as seconds: `retry-after-ms`, `retry-after` in seconds or as an HTTP date."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


_QUOTA_WORDS = ("insufficient_quota", "spend limit", "spend_limit", "credit balance", "billing", "quota exceeded",
                "exceeded your current quota", "perday")
_CONTEXT_WORDS = ("context_length_exceeded", "context length", "context window", "prompt is too long",
                  "too many tokens", "exceeds the maximum number of tokens", "input token count", "maximum context")
_AUTH_WORDS = ("invalid_api_key", "api key not valid", "api_key_invalid", "authentication", "unauthorized",
               "incorrect api key", "permission_denied")


def classify(
    *,
    provider: str,
    status: int | None,
    kind: str = "",
    code: str = "",
    message: str = "",
    retry_after: float | None = None,
    secrets: tuple[str, ...] = (),
) -> e.LLMError:
    """One place that turns a vendor's error (status, type, code, text) into a Parley error."""
    message = redact(message or kind or f"HTTP {status}", *secrets)
    text = f"{kind} {code} {message}".lower()
    kw: dict[str, Any] = {"provider": provider, "status": status}
    if any(word in text for word in _CONTEXT_WORDS):
        return e.ContextTooLong(message, **kw)
    if status == 402 or (status in (429, 403, None) and any(word in text for word in _QUOTA_WORDS)):
        return e.QuotaExceeded(message, **kw)
    if status in (401, 403) or "authentication_error" in text or any(w in text for w in _AUTH_WORDS):
        return e.AuthFailed(message, **kw)
    if status == 429 or "rate_limit" in text or "resource_exhausted" in text:
        return e.RateLimited(message, retry_after=retry_after, **kw)
    if status == 529 or "overloaded" in text:
        return e.Overloaded(message, **kw)
    if status == 408 or status == 504:
        return e.Timeout(message, **kw)
    if status is not None and status >= 500:
        return e.ProviderUnavailable(message, **kw)
    if status == 404:
        return e.InvalidRequest(message or "Model not found.", **kw)
    if status is not None and 400 <= status < 500:
        return e.InvalidRequest(message, **kw)
    # an error event without a status (in a 200 stream) that names nothing we know: treat as transient
    if "invalid" in text:
        return e.InvalidRequest(message, **kw)
    return e.ProviderUnavailable(message, **kw)


def from_transport(exc: BaseException, provider: str) -> e.LLMError:
    """Connection-level failures (raised by httpx2 directly, or wrapped by an SDK)."""
    if isinstance(exc, httpx2.TimeoutException) and not isinstance(exc, httpx2.ConnectTimeout):
        return e.Timeout(f"{provider}: the provider did not answer in time", provider=provider)
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        return e.ProviderUnavailable(f"{provider}: could not connect", provider=provider)
    return e.ProviderUnavailable(f"{provider}: the connection broke ({type(exc).__name__})", provider=provider)


def http_timeout() -> httpx2.Timeout:
    """httpx read timeout = the longer of first-token and idle timeouts: llm.chat enforces both exactly."""
    read = max(conf.first_token_timeout(), conf.idle_timeout())
    return httpx2.Timeout(connect=conf.connect_timeout(), read=read, write=read, pool=conf.connect_timeout())


def dumps_arguments(arguments: dict[str, Any], raw: str | None) -> str:
    return raw if raw is not None else json.dumps(arguments)


def parse_arguments(text: str) -> tuple[dict[str, Any], str | None]:
    """(arguments, raw): raw is the text when it is not a JSON object, for the tool loop to report."""
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except ValueError:
        return {}, text
    if not isinstance(value, dict):
        return {}, text
    return value, None


C = TypeVar("C")
# SDK clients hold connection pools bound to the event loop that opened them: one set per loop.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def client_for_loop(key: tuple, make: Callable[[], C]) -> C:
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = make()
    return client


async def clients_close() -> None:
    """Close the SDK clients of the running loop (before the loop ends, e.g. in a script)."""
    per_loop = _clients.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        close = getattr(getattr(client, "aio", None), "aclose", None) or getattr(client, "close", None)
        if close is not None:
            try:
                await close()
            except Exception:  # noqa: S110 - closing is best effort
                pass
