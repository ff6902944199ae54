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
from .usage import VENDOR_USAGE, output_cap, vendor_input_tokens

__all__ = [
    "FakeError",
    "FakeProviderServer",
    "FakeToolCall",
    "RecordedRequest",
    "VENDOR_USAGE",
    "Reply",
    "VendorScript",
    "auth_failed",
    "context_too_long",
    "dropped",
    "invalid_request",
    "output_cap",
    "overloaded",
    "quota_exceeded",
    "rate_limited",
    "reply",
    "server_error",
    "stalled",
    "stream_error",
    "tool_call",
    "tool_calls",
    "vendor_input_tokens",
]
