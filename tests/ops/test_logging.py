"""JSON structured logs (request id, organization id, no content or secrets), the middlewares that
set the context, and Sentry's scrubbing — the last against a fake Sentry server over a socket."""

import asyncio
import gzip
import io
import json
import logging
import logging.config
import os
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
import structlog
from django.http import HttpResponse
from django.test import RequestFactory
from structlog.contextvars import bound_contextvars

from config.observability import (
    PLAIN_FORMAT,
    JsonFormatter,
    LogContextMiddleware,
    RequestContextMiddleware,
    WebsocketLogContext,
    current_request_id,
    logging_config,
    scrub_event,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Please summarise the confidential merger plan for Globex"
ANSWER = "The merger closes on the 3rd"


@contextmanager
def json_lines(name: str = "tests.ops.json"):
    """A logger whose lines go through JsonFormatter into a list of parsed objects."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    lines: list[dict] = []
    try:
        yield logger, lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        raw = stream.getvalue()
        lines.extend(json.loads(line) for line in raw.splitlines())  # each line is one JSON object
        lines.append({"_raw": raw})


def _lines(lines):
    return [line for line in lines if "_raw" not in line], lines[-1]["_raw"]


# --- the formatter ---------------------------------------------------------------------------------


def test_a_line_is_json_with_the_context_ids_and_the_fixed_fields():
    structlog.contextvars.clear_contextvars()  # an earlier test's request may have bound ids in this thread
    with json_lines() as (logger, lines):
        with bound_contextvars(request_id="req-0123456789", organization_id="42"):
            logger.warning("settled %s for %d tokens", "chatcmpl-abc123", 1234)
        logger.info("outside any request")
    (inside, outside), _ = _lines(lines)
    assert set(inside) >= {"timestamp", "level", "logger", "message", "request_id", "organization_id"}
    assert inside["message"] == "settled chatcmpl-abc123 for 1234 tokens"
    assert inside["level"] == "warning" and inside["logger"] == "tests.ops.json"
    assert inside["request_id"] == "req-0123456789" and inside["organization_id"] == "42"
    assert inside["timestamp"].endswith("Z") and "T" in inside["timestamp"]
    assert outside["request_id"] is None and outside["organization_id"] is None


def test_prompt_and_answer_text_passed_as_arguments_never_reach_the_line():
    with json_lines() as (logger, lines):
        logger.info("the member asked %s and got %r", PROMPT, ANSWER)
        logger.info("title %(title)s of %(id)s", {"title": PROMPT, "id": uuid.UUID(int=7)})
    (first, second), raw = _lines(lines)
    assert PROMPT not in raw and ANSWER not in raw and "merger" not in raw
    assert first["message"] == f"the member asked <str len={len(PROMPT)}> and got '<str len={len(ANSWER)}>'"
    assert second["message"] == f"title <str len={len(PROMPT)}> of 00000000-0000-0000-0000-000000000007"


def test_identifiers_pass_and_secrets_do_not():
    secret = "pk_" + "A1b2C3d4" * 5
    with json_lines() as (logger, lines):
        logger.info("model %s path %s key %s vendor %s auth %s", "gpt-4o-mini", "/v1/chat/completions", secret,
                    "sk-proj-abcdef0123456789", "Bearer")  # fmt: skip
    (line,), raw = _lines(lines)
    assert "gpt-4o-mini" in line["message"] and "/v1/chat/completions" in line["message"]
    assert secret not in raw and "sk-proj" not in raw


def test_objects_are_named_by_type_not_rendered():
    class Conversation:
        def __str__(self):  # a model's __str__ is often its title: content
            return PROMPT

    with json_lines() as (logger, lines):
        logger.info("saving %s with %s", Conversation(), [PROMPT])
        logger.info(Conversation())
    (first, second), raw = _lines(lines)
    assert PROMPT not in raw
    assert first["message"] == "saving <Conversation> with <list len=1>"
    assert second["message"] == "<Conversation>"


def test_extra_fields_other_than_the_allow_list_are_dropped():
    with json_lines() as (logger, lines):
        logger.info("answer done", extra={"prompt": PROMPT, "answer": ANSWER, "model": "gpt-4o", "status_code": 502,
                                          "message_id": PROMPT, "api_key": "pk_live_secret_value"})  # fmt: skip
    (line,), raw = _lines(lines)
    assert line["model"] == "gpt-4o" and line["status_code"] == 502
    assert "prompt" not in line and "answer" not in line and "api_key" not in line
    assert line["message_id"] == f"<str len={len(PROMPT)}>"  # allow-listed name, but the value is text
    assert PROMPT not in raw and ANSWER not in raw and "pk_live" not in raw


def test_an_exception_is_logged_as_its_type_and_stack_not_its_message():
    with json_lines() as (logger, lines):
        try:
            raise ValueError(f"could not parse {PROMPT}")
        except ValueError:
            logger.exception("call %s failed", "chatcmpl-1")
        try:
            try:
                raise KeyError(ANSWER)
            except KeyError as exc:
                raise RuntimeError(ANSWER) from exc
        except RuntimeError:
            logger.warning("wrapped", exc_info=True)
    (first, second), raw = _lines(lines)
    assert first["exc_type"] == "ValueError" and "exc_message" not in first
    assert any("test_logging.py" in frame and "test_an_exception" in frame for frame in first["stack"])
    assert second["exc_type"] == "RuntimeError" and second["exc_cause"] == "KeyError"
    assert PROMPT not in raw and ANSWER not in raw


def test_an_infrastructure_error_keeps_its_message():
    with json_lines() as (logger, lines):
        try:
            raise psycopg.OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")
        except psycopg.OperationalError:
            logger.exception("settling failed")
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            logger.exception("redis down")
    (database, socket_), _ = _lines(lines)
    assert database["exc_type"] == "psycopg.OperationalError"
    assert "Connection refused" in database["exc_message"]
    assert socket_["exc_type"] == "ConnectionRefusedError" and "Connection refused" in socket_["exc_message"]


def test_a_malformed_call_still_gives_one_json_line():
    with json_lines() as (logger, lines):
        logger.warning("%d tokens for %s", "many")  # wrong type and too few arguments
    (line,), _ = _lines(lines)
    assert line["message"].startswith("%d tokens for %s")


def test_logging_config_plain_keeps_the_classic_format_and_json_uses_the_formatter():
    plain = logging_config("plain", "info")
    assert plain["handlers"]["console"]["formatter"] == "plain"
    assert plain["formatters"]["plain"]["format"] == PLAIN_FORMAT == "%(asctime)s %(levelname)s %(name)s %(message)s"
    assert plain["root"]["level"] == "INFO"
    assert plain["loggers"] == {
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    }
    as_json = logging_config("JSON", "debug")
    assert as_json["handlers"]["console"]["formatter"] == "json" and as_json["root"]["level"] == "DEBUG"
    assert as_json["loggers"]["django"] == {"handlers": [], "propagate": True}  # no second, plain line
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config("xml", "INFO")


def test_the_json_config_applies_and_writes_json_to_the_console(capsys):
    from django.conf import settings
    from django.utils.log import configure_logging

    try:
        logging.config.dictConfig(logging_config("json", "INFO"))
        logging.getLogger("billing.settlement").warning("released %d reservations", 3)
        logging.getLogger("billing.settlement").debug("not at INFO")
        logging.getLogger("django.request").warning("Not Found: %s", "/nowhere")
        django_handlers = logging.getLogger("django").handlers + logging.getLogger("django.server").handlers
    finally:
        configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    err = capsys.readouterr().err.strip().splitlines()
    parsed = [json.loads(line) for line in err if line.startswith("{")]
    assert [p["message"] for p in parsed if p["logger"] == "billing.settlement"] == ["released 3 reservations"]
    assert [p["message"] for p in parsed if p["logger"] == "django.request"] == ["Not Found: /nowhere"]
    assert django_handlers == []  # Django's own plain handlers are gone: no second, plain line


# --- context: the Django middleware ----------------------------------------------------------------


class _Membership:
    organization_id = uuid.UUID(int=99)


def _logging_view(logger):
    def view(request):
        logger.info("handled")
        return HttpResponse("ok")

    return view


def test_the_django_middleware_names_the_request_and_the_members_organization():
    factory = RequestFactory()
    with json_lines() as (logger, lines):
        middleware = LogContextMiddleware(_logging_view(logger))
        request = factory.get("/chat/")
        request.membership = _Membership()
        response = middleware(request)
        anonymous = factory.get("/", HTTP_X_REQUEST_ID="from-the-proxy-1234")
        anonymous.membership = None
        second = middleware(anonymous)
    (first_line, second_line), _ = _lines(lines)
    assert first_line["request_id"] == response["X-Request-ID"] == request.request_id
    assert len(response["X-Request-ID"]) == 32
    assert first_line["organization_id"] == str(_Membership.organization_id)
    assert second_line["request_id"] == second["X-Request-ID"] == "from-the-proxy-1234"
    assert second_line["organization_id"] is None
    assert current_request_id() is None  # nothing leaks into the next request on this thread


def test_an_unsafe_request_id_header_is_replaced():
    factory = RequestFactory()
    with json_lines() as (logger, lines):
        middleware = LogContextMiddleware(_logging_view(logger))
        request = factory.get("/", HTTP_X_REQUEST_ID="x\nlevel=error fake line " + PROMPT)
        request.membership = None
        response = middleware(request)
    (line,), raw = _lines(lines)
    assert line["request_id"] == response["X-Request-ID"] and len(line["request_id"]) == 32
    assert PROMPT not in raw


async def test_the_django_middleware_works_in_an_async_stack():
    with json_lines() as (logger, lines):

        async def view(request):
            logger.info("async handled")
            return HttpResponse("ok")

        middleware = LogContextMiddleware(view)
        request = RequestFactory().get("/v1/models")
        request.membership = _Membership()
        response = await middleware(request)
    (line,), _ = _lines(lines)
    assert line["request_id"] == response["X-Request-ID"]
    assert line["organization_id"] == str(_Membership.organization_id)


# --- context: the ASGI middlewares -----------------------------------------------------------------


async def _http(app, headers=()):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": list(headers), "query_string": b""}
    await app(scope, receive, send)
    return sent


async def test_the_asgi_middleware_gives_each_request_an_id_seen_by_the_app_and_the_client():
    seen = []

    async def app(scope, receive, send):
        seen.append(current_request_id())
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = RequestContextMiddleware(app)
    first, second = await asyncio.gather(_http(wrapped), _http(wrapped, [(b"x-request-id", b"nginx-abcdef012345")]))
    headers = [dict(message["headers"]) for message in (first[0], second[0])]
    assert headers[0][b"x-request-id"].decode() == seen[0]
    assert headers[1][b"x-request-id"] == b"nginx-abcdef012345" and seen[1] == "nginx-abcdef012345"
    assert seen[0] != seen[1]
    assert current_request_id() is None


async def test_a_response_that_names_its_own_request_id_keeps_it():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"mine-0123456789")]})
        await send({"type": "http.response.body", "body": b""})

    sent = await _http(RequestContextMiddleware(app))
    assert [v for k, v in sent[0]["headers"] if k == b"x-request-id"] == [b"mine-0123456789"]


async def test_a_websocket_gets_a_request_id_and_its_members_organization():
    seen = {}

    async def consumer(scope, receive, send):
        from structlog.contextvars import get_contextvars

        seen.update(get_contextvars())

    app = RequestContextMiddleware(WebsocketLogContext(consumer))

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        raise AssertionError("nothing is sent")

    # What accounts.ws.MembershipMiddleware leaves in the scope before the inner app runs.
    scope = {"type": "websocket", "path": "/ws/chat/", "headers": [], "membership": _Membership()}
    await app(scope, receive, send)
    assert len(seen["request_id"]) == 32
    assert seen["organization_id"] == str(_Membership.organization_id)


# --- Celery tasks ----------------------------------------------------------------------------------


def test_a_celery_tasks_lines_carry_its_id_and_name_and_the_callers_context_comes_back():
    from celery import signals

    from config.celery import app
    from config.observability import celery_setup

    celery_setup()
    celery_setup()  # connecting twice is harmless

    @app.task(name="tests.ops.logging_probe")
    def probe():
        logging.getLogger("tests.ops.json").info("inside the task")

    with json_lines() as (logger, lines):
        with bound_contextvars(request_id="req-caller-000001", organization_id="7"):
            probe.apply(task_id="task-id-0123456789")  # eager: runs here, between the signals
            logger.info("back in the caller")
    (inside, after), _ = _lines(lines)
    assert inside["request_id"] == "task-id-0123456789" and inside["task"] == "tests.ops.logging_probe"
    assert inside["organization_id"] is None
    assert after["request_id"] == "req-caller-000001" and after["organization_id"] == "7" and "task" not in after
    ours = [key for key, _ in signals.task_prerun.receivers if key[0] == "parley-log-context-start"]
    assert len(ours) == 1


# --- Sentry ----------------------------------------------------------------------------------------


def test_scrub_event_removes_bodies_cookies_queries_credentials_and_content():
    event = {
        "request": {
            "method": "POST",
            "url": "https://parley.example/v1/chat/completions?api_key=pk_secret",
            "query_string": "api_key=pk_secret",
            "data": {"messages": [{"role": "user", "content": PROMPT}]},
            "cookies": {"sessionid": "abc"},
            "headers": {"Authorization": "Bearer pk_secret", "Cookie": "sessionid=abc", "User-Agent": "openai-python"},
            "env": {"REMOTE_ADDR": "203.0.113.9"},
        },
        "logentry": {
            "message": "call %s failed for %s",
            "params": ["chatcmpl-1", PROMPT],
            "formatted": f"... {PROMPT}",
        },
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "module": "builtins",
                    "value": PROMPT,
                    "stacktrace": {"frames": [{"function": "stream", "vars": {"prompt": PROMPT}}]},
                },
                {"type": "OperationalError", "module": "psycopg", "value": "server closed the connection unexpectedly"},
            ]
        },  # fmt: skip
        "extra": {"prompt": PROMPT},
        "user": {"email": "someone@example.com", "ip_address": "203.0.113.9"},
        "breadcrumbs": {"values": [{"category": "conversations", "message": PROMPT, "data": {"answer": ANSWER}}]},
    }
    with bound_contextvars(request_id="req-0123456789", organization_id="42"):
        scrubbed = scrub_event(event, {})
    text = json.dumps(scrubbed)
    assert PROMPT not in text and ANSWER not in text and "pk_secret" not in text and "sessionid" not in text
    assert "someone@example.com" not in text and "203.0.113.9" not in text
    assert scrubbed["request"] == {
        "method": "POST",
        "url": "https://parley.example/v1/chat/completions",
        "headers": {"User-Agent": "openai-python"},
    }
    assert scrubbed["logentry"]["message"] == f"call chatcmpl-1 failed for <str len={len(PROMPT)}>"
    values = scrubbed["exception"]["values"]
    assert values[0]["type"] == "ValueError" and values[0]["value"].startswith("<message removed")
    assert values[1]["value"] == "server closed the connection unexpectedly"
    assert scrubbed["tags"] == {"request_id": "req-0123456789", "organization_id": "42"}


class _FakeSentry(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


_SENTRY_SCRIPT = """
import logging, os
import django
django.setup()
from config.observability import asgi_application, sentry_init
assert sentry_init()
import sentry_sdk
from sentry_sdk.integrations.asgi import SentryAsgiMiddleware
assert isinstance(asgi_application(lambda *a: None), SentryAsgiMiddleware)
from structlog.contextvars import bind_contextvars
bind_contextvars(request_id="req-sentry-000001", organization_id="org-77")
log = logging.getLogger("conversations.engine")
prompt = os.environ["PROBE_PROMPT"]
log.info("the member asked %s", prompt)  # a breadcrumb
try:
    raise ValueError("could not stream " + prompt)
except ValueError:
    log.exception("call %s failed for %s", "chatcmpl-probe", prompt)
sentry_sdk.flush(10)
"""


def test_sentry_receives_the_error_without_content_or_pii():
    _FakeSentry.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeSentry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SENTRY_DSN": f"http://publickey@127.0.0.1:{server.server_address[1]}/1",
            "SENTRY_ENVIRONMENT": "ops-test",
            "SENTRY_RELEASE": "parley@test",
            "PROBE_PROMPT": PROMPT,
        }
        subprocess.run([sys.executable, "-c", _SENTRY_SCRIPT], env=env, cwd=ROOT, check=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    raw = b"".join(_FakeSentry.bodies).decode()
    assert PROMPT not in raw and "merger" not in raw
    events = []
    for body in _FakeSentry.bodies:
        for line in body.decode().splitlines():
            item = json.loads(line) if line.startswith("{") else {}
            if "exception" in item:
                events.append(item)
    assert len(events) == 1
    (event,) = events
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    assert event["logentry"]["message"] == f"call chatcmpl-probe failed for <str len={len(PROMPT)}>"
    assert event["tags"]["request_id"] == "req-sentry-000001" and event["tags"]["organization_id"] == "org-77"
    assert event["environment"] == "ops-test" and event["release"] == "parley@test"
    assert "user" not in event and "extra" not in event
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert all("vars" not in frame for frame in frames)
    crumbs = event.get("breadcrumbs", {}).get("values", [])
    assert any(crumb.get("message") == f"the member asked <str len={len(PROMPT)}>" for crumb in crumbs), crumbs


# --- wired into the real stacks --------------------------------------------------------------------


@pytest.mark.django_db
def test_in_the_django_middleware_stack_every_response_names_its_request(settings, client):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "config.observability.LogContextMiddleware"]
    first = client.get("/healthz")
    second = client.get("/healthz", HTTP_X_REQUEST_ID="lb-request-000042")
    assert first.status_code == 200 and len(first["X-Request-ID"]) == 32
    assert second["X-Request-ID"] == "lb-request-000042"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
async def test_wrapping_the_asgi_application_names_v1_requests_too():
    """/v1/ skips Django's middleware (config/handlers.py): only the ASGI wrapper can name it."""
    from channels.testing import HttpCommunicator

    from config.asgi import application
    from config.observability import asgi_application

    communicator = HttpCommunicator(asgi_application(application), "GET", "/v1/models")
    response = await communicator.get_response(timeout=30)
    headers = {key.lower(): value for key, value in response["headers"]}
    assert response["status"] == 401 and headers[b"content-type"].startswith(b"application/json")
    assert len(headers[b"x-request-id"]) == 32
