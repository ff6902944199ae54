"""Logs and error reports: JSON structured logs with request and organization ids, and Sentry.

The rule for what a log line may carry (docs/operations.md): code never logs prompt or answer
text, and the JSON formatter is the safety net that enforces it as far as a formatter can —

- `message` is the log call's format string with its arguments rendered only when they are
  identifier-like: numbers, booleans, None, UUIDs, dates, and strings of at most 100 characters
  without spaces (ids, model names, paths, codes) that do not look like a secret (`pk_…`, `sk-…`,
  `Bearer …`). Any other string becomes `<str len=N>`, an exception its class name, any other
  object `<TypeName>` (a model's `__str__` may be a conversation title).
- fields passed with `extra=` are dropped unless their name is in `EXTRA_FIELDS` (and their
  values pass the same test); the request id, organization id and Celery task come from
  context variables, never from the record.
- an exception is logged as its type and stack (file, line, function); its message only for
  infrastructure errors (database, Redis, broker, socket), whose messages carry no content.

Context: `RequestContextMiddleware` (ASGI, outermost) gives every HTTP request and websocket
connection a request id (the client's `X-Request-ID` when it is a plain token, else a new one)
and returns it as `X-Request-ID`; `LogContextMiddleware` (Django) does the same where no ASGI
wrapper ran and adds the session member's organization; `WebsocketLogContext` adds a socket's.
Tasks and streams started from there inherit both (asyncio copies context variables).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import logging
import os
import re
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from structlog.contextvars import bind_contextvars, bound_contextvars, get_contextvars, reset_contextvars

# --- what may be logged ----------------------------------------------------------------------------

CONTEXT_FIELDS = ("request_id", "organization_id", "task")
EXTRA_FIELDS = frozenset(
    {"status_code", "entry", "status", "provider", "code", "model", "conversation_id", "message_id", "duration_ms"}
)
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.:/@+#=,\-\[\]]{1,100}")
_SECRET_LIKE = re.compile(r"(?:pk_|sk[-_]|rk_|whsec_|AIza|xox[abpr]-|gh[pousr]_|bearer)", re.IGNORECASE)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
_PLAIN_VALUES = (bool, int, float, decimal.Decimal, uuid.UUID, dt.datetime, dt.date, dt.time, dt.timedelta)
# Exceptions of these module families describe infrastructure (hosts, timeouts, SQL states), not content.
_INFRASTRUCTURE_MODULES = ("psycopg", "django.db", "redis", "kombu", "amqp", "channels_redis")  # prefixes
_LOG_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def safe_value(value: Any) -> Any:
    """`value` if it is identifier-like (see the module's docstring), else a placeholder naming its type."""
    if value is None or isinstance(value, _PLAIN_VALUES):
        return value
    if isinstance(value, enum.Enum):
        return safe_value(value.value)
    if isinstance(value, str):
        if _SAFE_TOKEN.fullmatch(value) and not _SECRET_LIKE.match(value):
            return value
        return f"<str len={len(value)}>"
    if isinstance(value, BaseException):
        return f"<{type(value).__name__}>"
    if isinstance(value, (bytes, bytearray, list, tuple, dict, set)):
        return f"<{type(value).__name__} len={len(value)}>"
    return f"<{type(value).__name__}>"


def _json_value(value: Any) -> Any:
    value = safe_value(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def safe_message(template: Any, args: Any) -> str:
    """A log call's message with only identifier-like arguments rendered."""
    if not isinstance(template, str):
        return str(safe_value(template))
    if not args:
        return template
    if isinstance(args, Mapping):
        safe: Any = {key: safe_value(value) for key, value in args.items()}
    else:
        safe = tuple(safe_value(value) for value in (args if isinstance(args, tuple | list) else (args,)))
    try:
        return template % safe
    except (TypeError, ValueError, KeyError):  # "%d" given a placeholder, or a malformed template
        values = safe.values() if isinstance(safe, dict) else safe
        return f"{template} {' '.join(str(value) for value in values)}"


def exception_type(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def message_allowed(module: str, type_name: str) -> bool:
    """Whether an exception's message may be logged: infrastructure errors only."""
    if module.startswith(_INFRASTRUCTURE_MODULES):
        return True
    if module == "socket":  # gaierror, herror, timeout
        return True
    return module == "builtins" and type_name in {
        "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
        "BrokenPipeError", "TimeoutError", "OSError",
    }  # fmt: skip


def _short_path(filename: str) -> str:
    marker = "site-packages/"
    if marker in filename:
        return filename.split(marker, 1)[1]
    root = os.getcwd().rstrip("/") + "/"
    return filename[len(root) :] if filename.startswith(root) else filename


def _exception_fields(exc_info: Any) -> dict[str, Any]:
    if not exc_info or exc_info is True:
        return {}
    exc_type, exc, tb = exc_info
    if exc_type is None:
        return {}
    fields: dict[str, Any] = {"exc_type": exception_type(exc_type)}
    if message_allowed(exc_type.__module__, exc_type.__qualname__) and exc is not None:
        fields["exc_message"] = str(exc)[:300]
    frames = traceback.extract_tb(tb)[-20:] if tb is not None else []
    fields["stack"] = [f"{_short_path(frame.filename)}:{frame.lineno} {frame.name}" for frame in frames]
    cause = (exc.__cause__ or exc.__context__) if exc is not None else None
    if cause is not None:
        fields["exc_cause"] = exception_type(type(cause))
    return fields


def _timestamp(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log_line(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the whole line, rebuilt from the record and the allow-lists."""
    record: logging.LogRecord | None = event_dict.get("_record")
    context = get_contextvars()
    if record is not None and not event_dict.get("_from_structlog"):
        message = safe_message(record.msg, event_dict.get("positional_args"))
        extras = {key: value for key, value in vars(record).items() if key not in _LOG_RECORD_FIELDS}
    else:  # a structlog logger's event: its keyword arguments are its extras
        event = event_dict.get("event")
        message = event if isinstance(event, str) else str(safe_value(event))
        extras = {key: value for key, value in event_dict.items() if not key.startswith("_") and key != "event"}
    created = record.created if record is not None else dt.datetime.now(dt.UTC).timestamp()
    line: dict[str, Any] = {
        "timestamp": _timestamp(created),
        "level": (record.levelname if record is not None else method_name).lower(),
        "logger": record.name if record is not None else str(event_dict.get("logger", "")),
        "message": message,
        "request_id": _json_value(context.get("request_id")),
        "organization_id": _json_value(context.get("organization_id")),
    }
    if context.get("task"):
        line["task"] = _json_value(context["task"])
    for key in sorted(EXTRA_FIELDS & extras.keys()):
        line[key] = _json_value(extras[key])
    line["pid"] = record.process if record is not None else os.getpid()
    line.update(_exception_fields(event_dict.get("exc_info") or (record.exc_info if record is not None else None)))
    return line


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, organization_id,
    pid, the allow-listed extras, and exc_type / stack for exceptions (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("processors", [_log_line, structlog.processors.JSONRenderer()])
        kwargs.setdefault("use_get_message", False)
        kwargs.setdefault("pass_foreign_args", True)
        super().__init__(*args, **kwargs)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
QUIET_LOGGERS = {"httpx": "WARNING", "httpx2": "WARNING", "daphne": "WARNING"}


def logging_config(fmt: str, level: str) -> dict:
    """Django's LOGGING: `fmt` "plain" (the classic one-line format) or "json" (JsonFormatter)."""
    fmt = (fmt or "plain").strip().lower()
    if fmt not in ("plain", "json"):
        raise ValueError(f"LOG_FORMAT must be 'plain' or 'json', not {fmt!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": PLAIN_FORMAT}, "json": {"()": "config.observability.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt}},
        "root": {"handlers": ["console"], "level": (level or "INFO").strip().upper()},
        "loggers": {
            **{name: {"level": quiet} for name, quiet in QUIET_LOGGERS.items()},
            # Django's default config gives these plain handlers of their own; in JSON every line
            # goes through the one formatter (and its rules), so they only propagate.
            **(
                {name: {"handlers": [], "propagate": True} for name in ("django", "django.server")}
                if fmt == "json"
                else {}
            ),
        },
    }


# --- context ---------------------------------------------------------------------------------------


def request_id_from(header: str | bytes | None) -> str:
    """The client's (or proxy's) request id when it is a plain token, else a new one."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if header and _REQUEST_ID.fullmatch(header.strip()):
        return header.strip()
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return get_contextvars().get("request_id")


def bind_organization(organization_id: Any) -> None:
    """Name the organization of the current request or socket in its log lines (API-key paths)."""
    bind_contextvars(organization_id=str(organization_id) if organization_id is not None else None)


def _header(scope: Mapping, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class RequestContextMiddleware:
    """ASGI: a request id for each HTTP request and websocket connection (wrap the whole app)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request_id = request_id_from(_header(scope, b"x-request-id"))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(key.lower() == b"x-request-id" for key, _ in headers):
                    headers.append((b"x-request-id", request_id.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        with bound_contextvars(request_id=request_id, organization_id=None):
            return await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)


class WebsocketLogContext:
    """ASGI, inside the websocket auth stack: the socket's organization (`scope["membership"]`)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        membership = scope.get("membership")
        organization_id = getattr(membership, "organization_id", None)
        with bound_contextvars(organization_id=str(organization_id) if organization_id else None):
            return await self.app(scope, receive, send)


class LogContextMiddleware:
    """Django: the request id (kept from RequestContextMiddleware, else made here) and the session
    member's organization. Place it after accounts.middleware.CurrentOrganizationMiddleware."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _context(self, request) -> dict[str, Any]:
        request_id = current_request_id() or request_id_from(request.headers.get("X-Request-ID"))
        request.request_id = request_id
        membership = getattr(request, "membership", None)
        organization_id = getattr(membership, "organization_id", None)
        return {"request_id": request_id, "organization_id": str(organization_id) if organization_id else None}

    @staticmethod
    def _tag(response, request_id: str):
        if not response.has_header("X-Request-ID"):
            response["X-Request-ID"] = request_id
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        context = self._context(request)
        with bound_contextvars(**context):  # restored afterwards: a sync thread serves many requests
            return self._tag(self.get_response(request), context["request_id"])

    async def __acall__(self, request):
        context = self._context(request)
        with bound_contextvars(**context):
            return self._tag(await self.get_response(request), context["request_id"])


def celery_setup() -> None:
    """Call once from config/celery.py: each task's log lines carry its task id (as request_id) and
    name; with METRICS_PORT set, the worker serves its own metrics (settlement retries and
    recoveries happen in its sweeps) on METRICS_ADDR (default 127.0.0.1). A prefork pool runs tasks
    in child processes: set PROMETHEUS_MULTIPROC_DIR too, or their counts are not seen."""
    from celery import signals

    bound: dict[str, tuple] = {}  # task id -> the tokens that restore what was bound before it

    def started(task_id=None, task=None, **kwargs):
        from accounts.audit import audit_bind  # not at import: config.celery loads before the apps

        name = getattr(task, "name", None)
        tokens = bind_contextvars(request_id=task_id, organization_id=None, task=name)
        # Audit events a task writes are the system's, as in a worker (also when run eagerly).
        audit = audit_bind(system=f"task {name}", user=None, api_key=None, ip_address=None, user_agent="")
        bound[task_id] = (tokens, audit)

    def ended(task_id=None, **kwargs):
        # Reset, not cleared: an eager task runs inside the request that called it.
        tokens, audit = bound.pop(task_id, (None, None))
        if audit is not None:
            from accounts.audit import audit_unbind

            with contextlib.suppress(ValueError):  # a token from another context (never in Celery's own flow)
                audit_unbind(audit)
        if tokens:
            reset_contextvars(**tokens)

    def worker_ready(**kwargs):
        port = os.environ.get("METRICS_PORT", "").strip()
        if port:
            from config import metrics

            metrics.serve(int(port), os.environ.get("METRICS_ADDR", "127.0.0.1"))

    def child_exit(pid=None, **kwargs):
        from config import metrics

        metrics.mark_process_dead(pid or os.getpid())

    signals.task_prerun.connect(started, weak=False, dispatch_uid="parley-log-context-start")
    signals.task_postrun.connect(ended, weak=False, dispatch_uid="parley-log-context-end")
    signals.worker_ready.connect(worker_ready, weak=False, dispatch_uid="parley-worker-metrics")
    signals.worker_process_shutdown.connect(child_exit, weak=False, dispatch_uid="parley-worker-child-exit")


# --- Sentry ----------------------------------------------------------------------------------------

_KEPT_HEADERS = frozenset({"user-agent", "content-type", "content-length", "accept", "host", "x-request-id"})


def _scrub_request(request: dict) -> dict:
    url = str(request.get("url") or "").split("?", 1)[0]
    headers = request.get("headers") or {}
    return {
        "method": request.get("method"),
        "url": url,
        "headers": {key: value for key, value in dict(headers).items() if str(key).lower() in _KEPT_HEADERS},
    }


def _scrub_exceptions(event: dict) -> None:
    for value in (event.get("exception") or {}).get("values") or []:
        module = str(value.get("module") or "builtins")
        if not message_allowed(module, str(value.get("type") or "")) and value.get("value"):
            value["value"] = f"<message removed, {len(str(value['value']))} chars>"
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)


def scrub_event(event: dict, hint: dict | None = None) -> dict:
    """Sentry's before_send: no request body, cookies, query or credentials, no log arguments or
    extras, no exception message other than an infrastructure error's; tags the request id."""
    if "request" in event:
        event["request"] = _scrub_request(event["request"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        event["logentry"] = {"message": safe_message(logentry.get("message"), logentry.get("params")), "params": []}
    if "message" in event and isinstance(event["message"], str) and hint and hint.get("log_record") is not None:
        record = hint["log_record"]
        event["message"] = safe_message(record.msg, record.args)
    _scrub_exceptions(event)
    event.pop("extra", None)
    event.pop("user", None)
    for span in event.get("spans") or []:
        span.pop("data", None)
    for crumb in (event.get("breadcrumbs") or {}).get("values") or []:
        if crumb.get("type") == "log":  # its message went through scrub_breadcrumb when it was recorded
            crumb.pop("data", None)
        else:
            _scrub_crumb(crumb)
    context = get_contextvars()
    tags = event.setdefault("tags", {})
    for key in ("request_id", "organization_id"):
        if context.get(key):
            tags[key] = str(context[key])
    return event


def _scrub_crumb(crumb: dict, record: logging.LogRecord | None = None) -> dict:
    crumb.pop("data", None)
    if record is not None:
        crumb["message"] = safe_message(record.msg, record.args)
    elif crumb.get("category") not in ("query", "redis") and crumb.get("message"):
        crumb["message"] = str(safe_value(crumb["message"]))
    return crumb


def scrub_breadcrumb(crumb: dict, hint: dict | None = None) -> dict:
    """Sentry's before_breadcrumb: log breadcrumbs by the same rule as the JSON logs, no data."""
    return _scrub_crumb(crumb, (hint or {}).get("log_record"))


def sentry_init() -> bool:
    """Start Sentry when SENTRY_DSN is set (True then). Django and Celery integrations; the Django
    integration covers HTTP under ASGI; `asgi_application` covers websockets and /v1/ too."""
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=os.environ.get("SENTRY_ENVIRONMENT") or os.environ.get("PARLEY_ENV") or "development",
        release=os.environ.get("SENTRY_RELEASE") or None,
        send_default_pii=False,
        include_local_variables=False,  # frames' locals would hold prompts and answers
        max_request_body_size="never",
        traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE") or 0),
        integrations=[
            DjangoIntegration(),
            CeleryIntegration(),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
    )
    return True


def asgi_application(app):
    """The whole ASGI application wrapped for observability: a request id for every HTTP request
    and socket and, when Sentry is on, Sentry's ASGI middleware (its Django integration patches
    only Django's own ASGIHandler, which neither the websocket consumers nor /v1/'s handler use)."""
    wrapped = RequestContextMiddleware(app)
    try:
        import sentry_sdk
    except ImportError:
        return wrapped
    if not sentry_sdk.get_client().is_active():
        return wrapped
    from sentry_sdk.integrations.asgi import SentryAsgiMiddleware

    return SentryAsgiMiddleware(wrapped)
