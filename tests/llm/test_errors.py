"""The one place that classifies vendor errors, Retry-After parsing, and secret redaction."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from llm import errors
from llm.providers.base import classify, redact, retry_after_seconds


@pytest.mark.parametrize(("status", "kind", "code", "message", "expected"), [
    (429, "requests", "rate_limit_exceeded", "Rate limit reached", errors.RateLimited),
    (429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota", errors.QuotaExceeded),
    (429, "rate_limit_error", "enforced_spend_limit_reached", "spend limit", errors.QuotaExceeded),
    (402, "billing_error", "", "Your credit balance is too low", errors.QuotaExceeded),
    (529, "overloaded_error", "", "Overloaded", errors.Overloaded),
    (None, "overloaded_error", "", "Overloaded", errors.Overloaded),  # an error event after HTTP 200
    (503, "UNAVAILABLE", "", "The model is overloaded.", errors.Overloaded),
    (500, "api_error", "", "Internal server error", errors.ProviderUnavailable),
    (502, "", "", "Bad gateway", errors.ProviderUnavailable),
    (504, "", "", "Gateway timeout", errors.Timeout),
    (401, "authentication_error", "", "invalid x-api-key", errors.AuthFailed),
    (403, "permission_error", "", "Your API key does not have permission", errors.AuthFailed),
    (400, "INVALID_ARGUMENT", "API_KEY_INVALID", "API key not valid.", errors.AuthFailed),
    (400, "invalid_request_error", "context_length_exceeded", "maximum context length", errors.ContextTooLong),
    (400, "invalid_request_error", "", "prompt is too long: 208121 tokens > 200000 maximum", errors.ContextTooLong),
    (400, "invalid_request_error", "", "messages: field required", errors.InvalidRequest),
    (404, "not_found_error", "", "model: nope", errors.InvalidRequest),
    (None, "", "", "something odd happened", errors.ProviderUnavailable),
])
def test_classify(status, kind, code, message, expected):
    error = classify(provider="x", status=status, kind=kind, code=code, message=message, retry_after=1.5)
    assert type(error) is expected
    assert error.provider == "x" and error.status == status
    if expected is errors.RateLimited:
        assert error.retry_after == 1.5


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds({"retry-after": later}) <= 31
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None


def test_redact_removes_configured_and_key_shaped_secrets(settings):
    settings.OPENAI_API_KEY = "plain-configured-secret-value"
    text = ("key plain-configured-secret-value, sk-proj-abcdefghijklmnop, sk-ant-api03-xyzxyzxyz, "
            "AIzaSyA1234567890abcdefg, Bearer abc.def.ghi-123456")
    cleaned = redact(text)
    for secret in ("plain-configured-secret-value", "sk-proj-abcdefghijklmnop", "sk-ant-api03-xyzxyzxyz",
                   "AIzaSyA1234567890abcdefg", "abc.def.ghi-123456"):
        assert secret not in cleaned
    assert cleaned.count("[redacted]") == 5


def test_errors_are_typed_and_know_whether_to_retry():
    assert errors.RateLimited(retry_after=2).retry_after == 2
    assert {c.__name__ for c in (errors.RateLimited, errors.Overloaded, errors.ProviderUnavailable, errors.Timeout)
            if c.retryable} == {"RateLimited", "Overloaded", "ProviderUnavailable", "Timeout"}
    assert not any(c.retryable for c in (errors.QuotaExceeded, errors.InvalidRequest, errors.AuthFailed,
                                         errors.ContextTooLong, errors.ModelUnavailable))
