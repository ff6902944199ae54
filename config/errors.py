"""The one error family of Parley and the one table that says how each error is answered.

Every app raises `ParleyError` (or a subclass: `accounts.errors`, `billing.errors`,
`conversations.errors` …) with a `code`. Each interface renders it from the same row of `ERRORS`:

- the REST API (`/api/v1/`): `rest_error_parts` → status, `{"error": {"code", "message",
  "retry_after", …}}`, `Retry-After`; an SSE stream's `error` event carries the same body;
- the OpenAI-compatible endpoint (`/v1/`): `openai_error_parts` → status, `{"error": {"message",
  "type", "code", "param"}}`, `Retry-After`, `WWW-Authenticate` on a 401;
- the websocket: `ws_error_frame` → the `error` frame of PROTOCOL.md.

Provider errors (`llm.errors.LLMError`) are translated once, by `error_from_llm`. `Retry-After` is
rounded once, by `retry_after_seconds`. docs/errors.md documents the table for users; a test keeps
the two in step.

This is the one config module the apps may import: it imports no app.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


class ParleyError(Exception):
    """Something went wrong."""

    code = "error"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        text = (message or self.__class__.__doc__ or self.code).strip()
        super().__init__(text)
        self.message = text
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.param = param

    @property
    def http_status(self) -> int:
        """The REST status of this error (the table's)."""
        return kind_of(self).status


@dataclass(frozen=True)
class ErrorKind:
    """One row of the table: how an error code is answered on each interface."""

    code: str
    status: int  # REST (/api/v1/)
    openai_status: int
    openai_type: str
    openai_code: str | None
    ws_code: str
    summary: str  # for users (docs/errors.md)
    openai_param: str | None = None  # the `param` OpenAI names when the error does not say one


# fmt: off
# code, REST status, OpenAI status, OpenAI type, OpenAI code, websocket code, what it means.
_ROWS = [
    # Requests a client can fix.
    ErrorKind("invalid_input", 422, 400, "invalid_request_error", None, "invalid_input",
              "The request is well-formed but refused (an empty message, nothing to regenerate, an unknown "
              "filter value). A body, query or path that does not match its schema (malformed JSON, "
              "non-UTF-8 bytes, a field of the wrong type, nesting deeper than the limit) answers 400 "
              "with the same code and `fields`."),
    ErrorKind("unsupported_parameter", 400, 400, "invalid_request_error", "unsupported_parameter", "invalid_input",
              "A parameter the model cannot honour; `param` names it."),
    # The body of an OpenAI-compatible request that does not match its schema (codes as OpenAI's own).
    ErrorKind("invalid_json", 400, 400, "invalid_request_error", "invalid_json", "invalid_input",
              "The body is not a JSON object in UTF-8 (malformed, a lone surrogate, nested too deep)."),
    ErrorKind("invalid_type", 400, 400, "invalid_request_error", "invalid_type", "invalid_input",
              "A parameter of the wrong JSON type; `param` names it."),
    ErrorKind("invalid_value", 400, 400, "invalid_request_error", "invalid_value", "invalid_input",
              "A parameter whose value is out of range or not one the API accepts; `param` names it."),
    ErrorKind("missing_required_parameter", 400, 400, "invalid_request_error", "missing_required_parameter",
              "invalid_input", "A required parameter is missing; `param` names it."),
    ErrorKind("unknown_parameter", 400, 400, "invalid_request_error", "unknown_parameter", "invalid_input",
              "A parameter the API does not know (OpenAI refuses these too); `param` names it."),
    ErrorKind("invalid_conversation", 400, 400, "invalid_request_error", "invalid_conversation", "invalid_input",
              "`X-Parley-Conversation` (or `metadata.parley_conversation`) is neither `new` nor a conversation id."),
    ErrorKind("missing_api_key", 401, 401, "invalid_request_error", "missing_api_key", "unauthenticated",
              "No API key was sent (`Authorization: Bearer <key>`)."),
    ErrorKind("unauthenticated", 401, 401, "invalid_request_error", "invalid_api_key", "unauthenticated",
              "No credentials, or a wrong, expired or revoked API key."),
    ErrorKind("permission_denied", 403, 403, "invalid_request_error", "permission_denied", "permission_denied",
              "Your role, or your organization's plan, does not allow this."),
    ErrorKind("organization_suspended", 403, 403, "invalid_request_error", "organization_suspended",
              "organization_suspended",
              "Parley's staff suspended your organization: its API keys, turns and websockets are refused (members "
              "can still log in, and the pages say why). Contact support."),
    ErrorKind("model_not_allowed", 403, 404, "invalid_request_error", "model_not_found", "model_not_allowed",
              "The model does not exist, is not in your plan, or has no price in effect.", openai_param="model"),
    ErrorKind("not_found", 404, 404, "invalid_request_error", "not_found", "not_found",
              "No such object in your organization, or no such path."),
    ErrorKind("method_not_allowed", 405, 405, "invalid_request_error", "method_not_allowed", "invalid_input",
              "The path does not accept this HTTP method."),
    ErrorKind("not_acceptable", 406, 406, "invalid_request_error", "not_acceptable", "invalid_input",
              "The `Accept` header asks for a format the API does not answer in."),
    ErrorKind("busy", 409, 409, "invalid_request_error", "busy", "busy",
              "An answer is already streaming in this conversation."),
    ErrorKind("payload_too_large", 413, 413, "invalid_request_error", "payload_too_large", "frame_too_large",
              "The request body is larger than the limit; the message states the limit in bytes."),
    ErrorKind("frame_too_large", 413, 413, "invalid_request_error", "frame_too_large", "frame_too_large",
              "A websocket frame is larger than the limit."),
    ErrorKind("message_too_long", 413, 400, "invalid_request_error", "message_too_long", "message_too_long",
              "The prompt has more characters than your plan allows.", openai_param="messages"),
    ErrorKind("context_length_exceeded", 400, 400, "invalid_request_error", "context_length_exceeded",
              "context_length_exceeded", "The prompt does not fit the model's context window.",
              openai_param="messages"),
    ErrorKind("unsupported_media_type", 415, 415, "invalid_request_error", "unsupported_media_type", "invalid_input",
              "The body is not JSON (`Content-Type: application/json`)."),
    # Limits.
    ErrorKind("rate_limited", 429, 429, "requests", "rate_limit_exceeded", "rate_limited",
              "Too many requests or tokens this minute; retry after `retry_after` seconds."),
    ErrorKind("budget_exceeded", 429, 429, "insufficient_quota", "budget_exceeded", "budget_exceeded",
              "The organization's (or your) monthly budget is used up."),
    # The model's provider.
    ErrorKind("provider_rate_limited", 429, 429, "requests", "provider_rate_limited", "provider_rate_limited",
              "The model's provider is rate limiting Parley; retry after `retry_after` seconds."),
    ErrorKind("provider_error", 502, 502, "api_error", "provider_error", "provider_error",
              "The model's provider failed or refused the call."),
    ErrorKind("provider_timeout", 504, 504, "api_error", "provider_timeout", "provider_timeout",
              "The model's provider did not answer in time."),
    # Parley.
    ErrorKind("interrupted", 503, 503, "server_error", "interrupted", "interrupted",
              "The answer was cut short because the server stopped; what was generated is kept and billed."),
    ErrorKind("service_unavailable", 503, 503, "server_error", "service_unavailable", "service_unavailable",
              "Parley cannot reach its database (or another service it needs) right now, during a restart or an "
              "outage; retry after `retry_after` seconds (`Retry-After`, a few)."),
    ErrorKind("internal_error", 500, 500, "server_error", "internal_error", "internal_error",
              "A bug in Parley; it is logged."),
]
# fmt: on

ERRORS: dict[str, ErrorKind] = {row.code: row for row in _ROWS}

# A request whose body, query or path does not match its declared schema: REST answers this status
# (with code `invalid_input` and `fields`), not the 422 of a well-formed request that is refused.
SCHEMA_ERROR_STATUS = 400


def kind_of(err: ParleyError) -> ErrorKind:
    """The row for an error: its code's, else the nearest class's code (a subclass may use a code of
    its own, such as `invitation_used` on an `InvalidInput`), else `invalid_input`'s."""
    row = ERRORS.get(err.code)
    if row is not None:
        return row
    for cls in type(err).__mro__:
        row = ERRORS.get(getattr(cls, "code", ""))
        if row is not None:
            return row
    return ERRORS["invalid_input"]


def retry_after_seconds(value: float | None) -> int | None:
    """The one rounding of a retry delay: whole seconds, rounded up, at least 1 (None stays None)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(seconds):
        return None
    if math.isinf(seconds):
        return 1 if seconds < 0 else None
    return max(1, math.ceil(seconds))


def _retry_headers(retry_after: int | None) -> dict[str, str]:
    return {} if retry_after is None else {"Retry-After": str(retry_after)}


def rest_body(err: ParleyError, **extra: Any) -> dict:
    """The REST error body (also the data of an SSE `error` event)."""
    body: dict[str, Any] = {
        "code": err.code,
        "message": err.message,
        "retry_after": retry_after_seconds(err.retry_after),
    }
    if err.param is not None:
        body["param"] = err.param
    body.update(extra)
    return {"error": body}


def rest_error_parts(err: ParleyError, *, status: int | None = None, **extra: Any) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) of the REST answer to `err`. `status` overrides the table (used only for
    SCHEMA_ERROR_STATUS); `extra` adds fields to the error object (`fields` of a validation error)."""
    row = kind_of(err)
    code = status or row.status
    headers = _retry_headers(retry_after_seconds(err.retry_after))
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="parley"'
    return code, rest_body(err, **extra), headers


def openai_error_parts(err: ParleyError) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) of the OpenAI-compatible answer to `err`, as OpenAI answers it."""
    row = kind_of(err)
    headers = _retry_headers(retry_after_seconds(err.retry_after))
    if row.openai_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="parley"'
    # A code of the app's own (not the row's) is kept: it says more than the row's generic one.
    code = row.openai_code if err.code == row.code else err.code
    body = {
        "error": {
            "message": err.message,
            "type": row.openai_type,
            "code": code,
            "param": err.param if err.param is not None else row.openai_param,
        }
    }
    return row.openai_status, body, headers


def ws_error_frame(err: ParleyError, client_id: str | None = None) -> dict:
    """The websocket `error` frame (PROTOCOL.md): type, code, message, retry_after, client_id."""
    row = kind_of(err)
    frame: dict[str, Any] = {
        "type": "error",
        "code": row.ws_code if err.code == row.code else err.code,
        "message": err.message,
        "retry_after": retry_after_seconds(err.retry_after),
    }
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def error_from_llm(exc: BaseException) -> ParleyError:
    """The one translation of a provider's error (llm.errors.LLMError) into Parley's family.

    Messages are Parley's own (plus the provider's name): a provider's text can quote request
    headers or keys, so it is never passed on, except a context-window refusal's wording, which
    is about the prompt.
    """
    from llm import errors as llm_errors  # llm imports no app; config may import llm

    if isinstance(exc, ParleyError):
        return exc
    name = getattr(exc, "provider", "")
    provider = f"The model's provider ({name})" if name else "The model's provider"
    if isinstance(exc, llm_errors.ModelUnavailable):
        return ParleyError("This model is not available.", code="model_not_allowed", param="model")
    if isinstance(exc, llm_errors.ContextTooLong):
        return ParleyError("The prompt does not fit the model's context window.", code="context_length_exceeded",
                           param="messages")  # fmt: skip
    if isinstance(exc, llm_errors.InvalidRequest):
        return ParleyError(f"{provider} refused the request as invalid.", code="invalid_input")
    if isinstance(exc, llm_errors.RateLimited):
        retry_after = getattr(exc, "retry_after", None)
        return ParleyError(
            f"{provider} is rate limiting; try again shortly.",
            code="provider_rate_limited",
            retry_after=retry_after if retry_after is not None else 1,
        )
    if isinstance(exc, llm_errors.Timeout):
        return ParleyError(f"{provider} did not answer in time.", code="provider_timeout")
    if isinstance(exc, llm_errors.LLMError):
        return ParleyError(f"{provider} failed ({type(exc).__name__}).", code="provider_error")
    return ParleyError("Internal error.", code="internal_error")


# --- The database is unavailable ----------------------------------------------------------------
# A PostgreSQL restart or outage, a connection it dropped, a pool with no connection to lend: every
# interface answers these as `service_unavailable` with a short retry hint, never as a bug (500).

DATABASE_RETRY_AFTER_SECONDS = 3  # a restart takes about a second; the pool reconnects within a few

# SQLSTATE classes of a lost server: 08 connection exception, 57 operator intervention (shutdown,
# restart, "the database system is starting up"), 53 insufficient resources (too many connections).
_OUTAGE_SQLSTATE_CLASSES = ("08", "57", "53")


def _is_outage(exc: BaseException) -> bool:
    from django.db import utils as db_utils  # django.db.utils imports no model and no app

    if isinstance(exc, db_utils.OperationalError | db_utils.InterfaceError):
        return True  # psycopg's are wrapped as these (a pool timeout is an OperationalError too)
    try:
        import psycopg
    except ImportError:  # the embedded default (SQLite) may run without it
        psycopg = None
    if psycopg is not None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(exc, db_utils.DatabaseError) or (psycopg is not None and isinstance(exc, psycopg.DatabaseError)):
        # Other database errors are bugs (an integrity error, bad SQL), unless the server went away.
        cause = exc.__cause__ if psycopg is not None and isinstance(exc.__cause__, psycopg.Error) else exc
        sqlstate = getattr(cause, "sqlstate", None) or ""
        if sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES:
            return True
        pgconn = getattr(cause, "pgconn", None)
        return pgconn is not None and psycopg is not None and pgconn.status == psycopg.pq.ConnStatus.BAD
    return False


def database_unavailable(exc: BaseException) -> ParleyError | None:
    """The `service_unavailable` error a database failure answers as (with `retry_after`), or None
    when `exc` is not one: OperationalError and InterfaceError (Django's or psycopg's, the pool's
    timeout included), and a DatabaseError of a connection the server dropped. Looks through the
    exceptions it was raised from, so a service that re-raises its own error is still recognised."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, ParleyError):
            return current if current.code == "service_unavailable" else None
        if _is_outage(current):
            return ParleyError(
                "Parley cannot reach its database right now; retry in a few seconds.",
                code="service_unavailable",
                retry_after=DATABASE_RETRY_AFTER_SECONDS,
            )
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def log_database_unavailable(exc: BaseException, where: str) -> None:
    """One warning line per refused request, without a traceback: an outage is not a bug, and it
    repeats for every request while it lasts. Names the exception, not its text (it can name hosts)."""
    logger.warning("database unavailable (%s): %s", where, type(exc).__name__)


# --- Bodies a client sends ------------------------------------------------------------------
# The REST API's parser (config/exceptions.py) and the OpenAI-compatible endpoint read JSON with
# this one function, so both refuse the same bodies the same way.

MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidBody(ParleyError):
    """The request body is not valid JSON."""

    code = "invalid_input"


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def json_loads_strict(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a client's JSON body, or raise `InvalidBody` (code `invalid_input`) saying why: not UTF-8,
    malformed, nested deeper than `max_depth`, a lone surrogate in a string (`"\\ud800"`, which no
    database or encoder accepts), NaN/Infinity or a number out of range."""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidBody(f"The body is not UTF-8 (invalid byte at offset {exc.start}).") from None
    else:
        text = raw
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidBody(f"The JSON is nested deeper than {max_depth} levels.") from None
    except ValueError as exc:  # json.JSONDecodeError, numbers out of range, too many digits
        raise InvalidBody(f"Malformed JSON: {str(exc)[:200]}") from None
    _check_tree(value, max_depth)
    return value


def _check_tree(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidBody("A string contains a lone surrogate (such as \\ud800): it is not valid Unicode text.")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise InvalidBody(f"The JSON is nested deeper than {max_depth} levels.")
            children = list(item.keys()) + list(item.values()) if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
