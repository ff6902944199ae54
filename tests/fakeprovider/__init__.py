"""A fake OpenAI / Anthropic / Gemini server for tests (see README.md)."""

from .script import (
    FakeError,
    FakeToolCall,
    Reply,
    auth_failed,
    context_too_long,
    dropped,
    invalid_request,
    overloaded,
    quota_exceeded,
    rate_limited,
    reply,
    server_error,
    stalled,
    stream_error,
    tool_call,
    tool_calls,
)
from .server import FakeProviderServer, RecordedRequest, VendorScript

__all__ = [
    "FakeError",
    "FakeProviderServer",
    "FakeToolCall",
    "RecordedRequest",
    "Reply",
    "VendorScript",
    "auth_failed",
    "context_too_long",
    "dropped",
    "invalid_request",
    "overloaded",
    "quota_exceeded",
    "rate_limited",
    "reply",
    "server_error",
    "stalled",
    "stream_error",
    "tool_call",
    "tool_calls",
]
