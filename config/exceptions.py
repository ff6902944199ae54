"""The REST API's error answers: `{"error": {"code", "message", "retry_after", …}}`, from config/errors.py's table.

`api_exception_handler` is DRF's EXCEPTION_HANDLER: it renders every `ParleyError` (whatever app
raised it) by the table, and DRF's and Django's own exceptions as the table's codes: a request that
does not match its schema (malformed JSON, a field of the wrong type, a body too deep or not UTF-8)
is a 400 `invalid_input` with `fields`; a body over the limit a 413 `payload_too_large` that states
the limit; a database that is unavailable (a PostgreSQL restart or outage, a pool with no connection
to lend, also while authenticating) a 503 `service_unavailable` with `Retry-After`. The async views
and Django's error handlers (config/urls.py) use `error_response`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from config.errors import (
    SCHEMA_ERROR_STATUS,
    InvalidBody,
    ParleyError,
    database_unavailable,
    json_loads_strict,
    log_database_unavailable,
    rest_error_parts,
)


def payload_too_large() -> ParleyError:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return ParleyError(f"The request body is larger than the limit of {limit} bytes.", code="payload_too_large")


class JSONParser(BaseParser):
    """DRF's JSON parser, strict: at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes (413 `payload_too_large`),
    UTF-8, nested at most config.errors.MAX_JSON_DEPTH deep, no lone surrogates (400 `invalid_input`)."""

    media_type = "application/json"
    renderer_class = JSONRenderer

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise payload_too_large()
        try:
            return json_loads_strict(raw)
        except InvalidBody as exc:
            raise drf.ParseError(exc.message) from None


class Pagination(PageNumberPagination):
    """`?page=N`, N a positive integer as the schema says: anything else (`?page=`, `?page=x`) is a
    400 (DRF's own reads an empty page as 1 and a word as a 404); a page past the end is a 404."""

    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param)
        if raw is None:
            return 1
        if not raw.isascii() or not raw.isdigit():
            raise drf.ValidationError({self.page_query_param: ["A page number is a positive integer."]})
        if len(raw) > 18:
            raise drf.NotFound("Invalid page.")  # past the end, as any page beyond the last
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters


def error_response(error: ParleyError, *, status: int | None = None, **extra: Any) -> JsonResponse:
    """The REST error shape as a plain Django response (async views, Django's error handlers)."""
    code, body, headers = rest_error_parts(error, status=status, **extra)
    return JsonResponse(body, status=code, headers=headers)


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
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
]


def parley_error_of(exc: Exception) -> tuple[ParleyError, int | None, dict] | None:
    """The ParleyError an exception answers as, the status that overrides the table (schema errors) and
    extra fields; None for an exception that is a bug (Django's 500 handling and logging take over)."""
    if isinstance(exc, ParleyError):
        return exc, None, {}
    if isinstance(exc, Http404):
        return ParleyError("Not found.", code="not_found"), None, {}
    if isinstance(exc, DjangoPermissionDenied):
        return ParleyError("You may not do that.", code="permission_denied"), None, {}
    if isinstance(exc, RequestDataTooBig):
        return payload_too_large(), None, {}
    if isinstance(exc, drf.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        error = ParleyError("The request is not valid: " + _flatten(exc.detail), code="invalid_input")
        return error, SCHEMA_ERROR_STATUS, {"fields": fields}
    if isinstance(exc, drf.ParseError):
        return ParleyError(_flatten(exc.detail), code="invalid_input"), SCHEMA_ERROR_STATUS, {}
    if isinstance(exc, drf.APIException):
        code = next((code for cls, code in _DRF_CODES if isinstance(exc, cls)), None)
        retry_after = getattr(exc, "wait", None) if isinstance(exc, drf.Throttled) else None
        error = ParleyError(_flatten(exc.detail), code=code or "invalid_input", retry_after=retry_after)
        return error, None if code else exc.status_code, {}
    outage = database_unavailable(exc)
    if outage is not None:
        log_database_unavailable(exc, "REST API")
        return outage, None, {}
    return None


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    parts = parley_error_of(exc)
    if parts is None:
        return None
    error, status, extra = parts
    code, body, headers = rest_error_parts(error, status=status, **extra)
    if code == 401:
        request = context.get("request")
        authenticator = getattr(request, "_authenticator", None) if request is not None else None
        if authenticator is not None and hasattr(authenticator, "authenticate_header"):
            headers["WWW-Authenticate"] = authenticator.authenticate_header(request) or headers["WWW-Authenticate"]
    return Response(body, status=code, headers=headers)
