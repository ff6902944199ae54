"""One error shape for the REST API: `{"error": {"code", "message", "retry_after"}}`.

`api_exception_handler` is DRF's EXCEPTION_HANDLER: it renders DRF's own exceptions, Django's 404
and permission errors, and every `accounts.errors.ParleyError` (whatever app raised it) with the
right status; 429s carry `Retry-After`. The async views (send a message, SSE, stop) use
`error_response` to answer the same shape.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from accounts.errors import InvalidInput, ParleyError

# Codes whose status is the same wherever they are raised (some apps' classes carry another one).
STATUS_BY_CODE = {
    "unauthenticated": 401,
    "permission_denied": 403,
    "model_not_allowed": 403,
    "not_found": 404,
    "busy": 409,
    "frame_too_large": 413,
    "message_too_long": 413,
    "rate_limited": 429,
    "budget_exceeded": 429,
}


def status_for(error: ParleyError) -> int:
    if error.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[error.code]
    if isinstance(error, InvalidInput):
        # Well-formed but refused by the service (empty message, nothing to regenerate …).
        return 422
    return getattr(error, "http_status", 400) or 400


def error_body(code: str, message: str, retry_after: float | None = None, **extra: Any) -> dict:
    body: dict[str, Any] = {"code": code, "message": message, "retry_after": retry_after}
    body.update(extra)
    return {"error": body}


def retry_after_header(retry_after: float | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(retry_after)))}


def parley_error_parts(error: ParleyError) -> tuple[int, dict, dict[str, str]]:
    status = status_for(error)
    retry_after = error.retry_after
    if retry_after is not None:
        retry_after = max(1, math.ceil(retry_after))
    headers = retry_after_header(retry_after) if status in (429, 503) or retry_after is not None else {}
    return status, error_body(error.code, error.message, retry_after), headers


def error_response(error: ParleyError) -> JsonResponse:
    """The REST error shape as a plain Django response (for the async views)."""
    status, body, headers = parley_error_parts(error)
    return JsonResponse(body, status=status, headers=headers)


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        parts = [f"{key}: {_flatten(value)}" for key, value in detail.items()]
        return "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


_DRF_CODES: list[tuple[type[drf.APIException], str]] = [
    (drf.NotAuthenticated, "unauthenticated"),
    (drf.AuthenticationFailed, "unauthenticated"),
    (drf.PermissionDenied, "permission_denied"),
    (drf.NotFound, "not_found"),
    (drf.MethodNotAllowed, "method_not_allowed"),
    (drf.NotAcceptable, "not_acceptable"),
    (drf.UnsupportedMediaType, "unsupported_media_type"),
    (drf.Throttled, "rate_limited"),
    (drf.ValidationError, "invalid_input"),
    (drf.ParseError, "invalid_input"),
]


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ParleyError):
        status, body, headers = parley_error_parts(exc)
        return Response(body, status=status, headers=headers)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", "The request body is too large."), status=413)
    if not isinstance(exc, drf.APIException):
        return None  # a bug: Django's 500 handling (and logging) takes over
    code = next((code for cls, code in _DRF_CODES if isinstance(exc, cls)), "error")
    extra: dict[str, Any] = {}
    if isinstance(exc, drf.ValidationError):
        message = "The request is not valid: " + _flatten(exc.detail)
        extra["fields"] = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
    else:
        message = _flatten(exc.detail)
    retry_after = getattr(exc, "wait", None) if isinstance(exc, drf.Throttled) else None
    headers: dict[str, str] = {}
    if isinstance(exc, drf.AuthenticationFailed | drf.NotAuthenticated):
        request = context.get("request")
        authenticator = getattr(request, "_authenticator", None) if request else None
        headers["WWW-Authenticate"] = 'Bearer realm="parley"'
        if authenticator is not None and hasattr(authenticator, "authenticate_header"):
            headers["WWW-Authenticate"] = authenticator.authenticate_header(request) or headers["WWW-Authenticate"]
    if retry_after is not None:
        retry_after = max(1, math.ceil(retry_after))
        headers.update(retry_after_header(retry_after))
    status = exc.status_code
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        status = 401
    return Response(error_body(code, message, retry_after, **extra), status=status, headers=headers)
