"""Vendor-neutral steps that script the fake provider: what the next request gets.

Each step is rendered in the wire format of the vendor that receives it (OpenAI Chat Completions,
Anthropic Messages, Gemini streamGenerateContent). See tests/fakeprovider/README.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

_ids = itertools.count(1)

ErrorKind = Literal[
    "rate_limit", "quota", "overloaded", "server", "unavailable", "auth", "invalid", "context", "not_found"
]

# Used when a reply gives no `usage`: input tokens fixed, output = number of text deltas.
DEFAULT_INPUT_TOKENS = 10
_UNSET: Any = object()


@dataclass
class FakeToolCall:
    name: str
    arguments: dict[str, Any] | str  # a str is sent as-is (e.g. malformed JSON)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"call_{next(_ids)}"


@dataclass
class FakeError:
    """An error answer: an HTTP status with the vendor's error body, or an error event in a stream."""

    kind: ErrorKind
    status: int | None = None  # default per kind and vendor
    message: str = ""
    retry_after: float | None = None  # sent as the Retry-After header (and Gemini's RetryInfo)
    first_byte_delay: float = 0.0


@dataclass
class Reply:
    """A streamed answer. `after=N` options act after the N-th text delta."""

    text: list[str] = field(default_factory=list)
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    usage: tuple[int, int] | tuple[int, int, int] | None = _UNSET  # (input, output[, cached]); None: no usage
    finish: str | None = None  # "stop" / "length" / "tool_calls"; default from the content
    first_byte_delay: float = 0.0  # before the response headers
    delta_delay: float = 0.0  # between text deltas
    stall_after: int | None = None  # stop sending (connection stays open) after N deltas
    drop_after: int | None = None  # cut the connection mid-body after N deltas
    error_after: tuple[int, FakeError] | None = None  # an error event inside the 200 stream after N deltas
    burst: bool = False  # write the whole stream at once (benchmarks: the client never waits on the server)

    def resolved_usage(self) -> tuple[int, int, int] | None:
        if self.usage is None:
            return None
        if self.usage is _UNSET:
            return (DEFAULT_INPUT_TOKENS, len(self.text), 0)
        if len(self.usage) == 2:
            return (self.usage[0], self.usage[1], 0)
        return tuple(self.usage)  # type: ignore[return-value]

    def resolved_finish(self) -> str:
        if self.finish:
            return self.finish
        return "tool_calls" if self.tool_calls else "stop"


Step = Reply | FakeError


# --- helpers ----------------------------------------------------------------------------------


def reply(*text: str, **options: Any) -> Reply:
    """`reply("Hel", "lo", usage=(12, 2))`: stream these text deltas."""
    return Reply(text=list(text), **options)


def tool_call(name: str, arguments: dict[str, Any] | str, *, id: str = "", text: tuple[str, ...] = (), **options: Any) -> Reply:
    """A reply that calls one tool (optionally after some text)."""
    return Reply(text=list(text), tool_calls=[FakeToolCall(name, arguments, id)], **options)


def tool_calls(*calls: FakeToolCall, **options: Any) -> Reply:
    return Reply(tool_calls=list(calls), **options)


def rate_limited(retry_after: float | None = None, **options: Any) -> FakeError:
    return FakeError("rate_limit", retry_after=retry_after, **options)


def quota_exceeded(**options: Any) -> FakeError:
    """A 429 that means the spend limit / quota is reached (OpenAI code `insufficient_quota`)."""
    return FakeError("quota", **options)


def overloaded(**options: Any) -> FakeError:
    """Anthropic 529 `overloaded_error`; OpenAI 503; Gemini 503 UNAVAILABLE."""
    return FakeError("overloaded", **options)


def server_error(status: int = 500, **options: Any) -> FakeError:
    return FakeError("server", status=status, **options)


def auth_failed(**options: Any) -> FakeError:
    return FakeError("auth", **options)


def invalid_request(message: str = "Invalid request.", **options: Any) -> FakeError:
    return FakeError("invalid", message=message, **options)


def context_too_long(**options: Any) -> FakeError:
    return FakeError("context", **options)


def stream_error(kind: ErrorKind = "overloaded", *, after: int = 0, text: tuple[str, ...] = (), **options: Any) -> Reply:
    """HTTP 200, `after` deltas of `text`, then an error event in the stream."""
    deltas = list(text) or [f"part{i} " for i in range(after)]
    return Reply(text=deltas, error_after=(after, FakeError(kind, **options)), usage=None)


def dropped(*text: str, after: int | None = None, **options: Any) -> Reply:
    """HTTP 200, some deltas, then the connection is cut mid-body (an incomplete chunked read)."""
    return Reply(text=list(text), drop_after=len(text) if after is None else after, usage=None, **options)


def stalled(*text: str, after: int | None = None, **options: Any) -> Reply:
    """HTTP 200, some deltas, then nothing more (the connection stays open until the test ends)."""
    return Reply(text=list(text), stall_after=len(text) if after is None else after, usage=None, **options)
