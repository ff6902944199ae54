"""PostgreSQL restarts and outages, against a real Daphne and a PostgreSQL of the test's own.

- A restart (`pg_ctl restart -m fast`) of a warm server, whose pool then holds only connections the
  restart killed, costs at most the requests in flight: the first request after it succeeds, and so
  does every request that starts once PostgreSQL is back; none answers a 500 or HTML.
- While PostgreSQL is stopped, every `/v1` and `/api` request (API key or session) answers JSON 503
  `service_unavailable` with `Retry-After`, a page a plain 503; a websocket turn gets an `error`
  frame with `retry_after` on a socket that stays open, and a new socket an `error` frame and close
  code 4503. When it is back, requests succeed again.

The PostgreSQL is private (initdb into a temporary folder, a free port) because the test stops it;
Redis is the suite's (REDIS_URL), left alone. The pool's timeout (how long a request waits for a
connection before it answers 503) is shortened to keep the test short; nothing else is changed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import openai
import psycopg
import pytest
from django import db as django_db
from psycopg_pool import PoolTimeout
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
DAPHNE = ROOT / ".venv" / "bin" / "daphne"
PYTHON = ROOT / ".venv" / "bin" / "python"
ASGI_APPLICATION = "config.asgi:application"
POOL_TIMEOUT = 5  # seconds (DATABASE_POOL_TIMEOUT; 10 by default)
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

# Variables of the suite's own database that must not reach the server under test.
_DROPPED = ("DATABASE_URL", "DATABASE_TEST_NAME", "DJANGO_SETTINGS_MODULE", "SQLITE_PATH")

# One process migrates and makes the organization, its keys and a signed-in session (Django starts once).
_SETUP_SCRIPT = """
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from accounts.models import Membership, Tier, User
from accounts.services import api_key_create, organization_create
user = User.objects.create_user(email="ops@example.com", password="correct-horse-battery-staple-42")
organization = organization_create(name="Ops", owner=user, tier=Tier.objects.get(slug="enterprise"))
membership = Membership.objects.select_related("organization__tier", "user").get(organization=organization, user=user)
print("SECRET=" + api_key_create(membership=membership, name="ops")[1])
print("UNUSED_SECRET=" + api_key_create(membership=membership, name="first used in an outage")[1])
session = SessionStore()
session[SESSION_KEY], session[BACKEND_SESSION_KEY] = str(user.pk), "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print("SESSION=" + session.session_key)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    assert found, "PostgreSQL's server binaries are needed (scripts/test.sh installs them)"
    return found[-1].parent


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(PYTHON), "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, (args[0], done.stderr[-3000:])
    return done


@dataclass
class PostgreSQL:
    bin: Path
    data: Path
    run: Path
    port: int

    def _as_postgres(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", command] if os.geteuid() == 0 else ["bash", "-c", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)

    def pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.run} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._as_postgres(
            f"{self.bin}/pg_ctl -D {self.data} -l {self.run}/pg.log -o '{options}' -w {action} {' '.join(extra)}"
        )

    def start(self) -> PostgreSQL:
        self._as_postgres(f"{self.bin}/initdb -D {self.data} -U postgres --auth=trust -E UTF8")
        self.pg_ctl("start")
        self._as_postgres(f"{self.bin}/createdb -h 127.0.0.1 -p {self.port} -U postgres parley")
        return self

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/parley"


@dataclass
class Server:
    url: str
    ws_url: str
    secret: str
    unused_secret: str  # a key no request used yet: not in any process's key cache
    session: str  # a signed-in session's key (the `sessionid` cookie)
    pg: PostgreSQL
    process: subprocess.Popen
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.secret, max_retries=0, timeout=30)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    run = Path(tempfile.mkdtemp(prefix="parley-pg-restart-"))
    run.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(run, "postgres")
    pg = PostgreSQL(bin=_pg_bin(), data=run / "pgdata", run=run, port=_free_port())
    process = None
    try:
        pg.start()
        env = {key: value for key, value in os.environ.items() if key not in _DROPPED}
        env.update(
            DATABASE_URL=pg.url,
            PARLEY_TESTING="1",
            DEBUG="0",  # as in production: Django's own error pages are never the answer
            CELERY_TASK_ALWAYS_EAGER="1",
            DATABASE_POOL_TIMEOUT=str(POOL_TIMEOUT),
            PARLEY_DEMO_TOKEN_DELAY="0.002",  # the demo model's answers in a tenth of a second
            PYTHONUNBUFFERED="1",
        )
        made = _manage(env, "shell", "-c", _SETUP_SCRIPT)
        printed = dict(line.split("=", 1) for line in made.stdout.splitlines() if "=" in line)
        secret, unused, session = printed["SECRET"], printed["UNUSED_SECRET"], printed["SESSION"]
        port = _free_port()
        log = run / "daphne.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port), ASGI_APPLICATION],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Daphne did not start"
            time.sleep(0.2)
        yield Server(
            url=url,
            ws_url=f"ws://127.0.0.1:{port}/ws/chat/",
            secret=secret,
            unused_secret=unused,
            session=session,
            pg=pg,
            process=process,
            log=log,
        )
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        pid_file = pg.data / "postmaster.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # immediate shutdown
            except (ProcessLookupError, ValueError):
                pass
            time.sleep(0.5)
        shutil.rmtree(run, ignore_errors=True)


# --- what a request may answer -----------------------------------------------------------------


def _assert_json(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path}"
    assert "html" not in response.headers.get("content-type", ""), (where, response.status_code, response.text[:300])
    assert response.status_code < 500 or response.status_code == 503, (where, response.status_code, response.text[:300])


def _assert_unavailable(response: httpx.Response, shape: str) -> None:
    """A JSON 503 `service_unavailable` in the interface's shape, with a short Retry-After."""
    where = f"{response.request.method} {response.request.url.path}"
    _assert_json(response)
    assert response.status_code == 503, (where, response.status_code, response.text[:300])
    retry = response.headers.get("retry-after")
    assert retry is not None and retry.isdigit() and 1 <= int(retry) <= 30, (where, retry)
    error = response.json()["error"]
    assert error["code"] == "service_unavailable", (where, error)
    if shape == "openai":
        assert error["type"] == "server_error" and "param" in error, (where, error)
    else:
        assert error["retry_after"] == int(retry), (where, error)


def _chat_body(stream: bool = False) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}], "stream": stream}


def _requests(server: Server, http: httpx.Client) -> dict[str, Callable[[], httpx.Response]]:
    """/v1 and /api requests that need the database, each as a call that answers a response."""
    auth = server.auth
    session = {"Cookie": f"sessionid={server.session}"}
    missing = uuid.uuid4()
    return {
        "v1 models": lambda: http.get("/v1/models", headers=auth),
        "v1 model": lambda: http.get("/v1/models/demo", headers=auth),
        "v1 chat": lambda: http.post("/v1/chat/completions", headers=auth, json=_chat_body()),
        "v1 chat stream": lambda: http.post("/v1/chat/completions", headers=auth, json=_chat_body(stream=True)),
        "v1 chat conversation": lambda: http.post(
            "/v1/chat/completions", headers={**auth, "X-Parley-Conversation": "new"}, json=_chat_body()
        ),
        "api conversations": lambda: http.get("/api/v1/conversations/", headers=auth),
        "api messages": lambda: http.get(f"/api/v1/conversations/{missing}/messages/", headers=auth),
        "api models": lambda: http.get("/api/v1/models/", headers=auth),
        "api usage": lambda: http.get("/api/v1/usage/", headers=auth),
        "api keys": lambda: http.get("/api/v1/api-keys/", headers=auth),
        "api send": lambda: http.post(
            "/api/v1/conversations/send/", headers=auth, json={"content": "Hello", "model": "demo"}
        ),
        "api send stream": lambda: http.post(
            "/api/v1/conversations/send/", headers=auth, json={"content": "Hello", "model": "demo", "stream": True}
        ),
        # a browser's session: read by the middleware, before any view runs
        "api session conversations": lambda: http.get("/api/v1/conversations/", headers=session),
    }


def _ws_turn(ws, content: str = "Hello") -> dict:
    """Send a turn; the first frame that answers it: `generation.finished`, or an `error` for it."""
    client_id = str(uuid.uuid4())
    frame = {"type": "message.send", "conversation": None, "content": content, "model": "demo", "client_id": client_id}
    ws.send(json.dumps(frame))
    while True:
        answer = json.loads(ws.recv(timeout=30))
        if answer["type"] == "error" and answer.get("client_id") == client_id:
            return answer
        if answer["type"] == "generation.finished":
            return answer


def _ws_ping(ws) -> None:
    ws.send(json.dumps({"type": "ping"}))
    while json.loads(ws.recv(timeout=10))["type"] != "pong":
        pass


def _ws_refused_unavailable(server: Server) -> None:
    """A new socket, of a key the process has not seen, while the database is away: accepted, an
    `error` frame, close 4503 (not a failed handshake)."""
    headers = {"Authorization": f"Bearer {server.unused_secret}"}
    with ws_connect(server.ws_url, additional_headers=headers, open_timeout=15) as ws:
        frame = json.loads(ws.recv(timeout=15))
        assert frame["type"] == "error" and frame["code"] == "service_unavailable", frame
        assert isinstance(frame["retry_after"], int) and frame["retry_after"] >= 1, frame
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503, closed.value


def _succeeds(server: Server, http: httpx.Client) -> None:
    """One of each: the SDK's models and completion, and the REST API, all answer normally."""
    client = server.openai()
    assert "demo" in [m.id for m in client.models.list()]
    completion = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}])
    assert completion.choices[0].message.content
    response = http.get("/api/v1/conversations/", headers=server.auth)
    assert response.status_code == 200, response.text[:300]


def _warm(server: Server, http: httpx.Client) -> None:
    """Requests at once, so the pool holds many connections (each one killed by a restart)."""
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        chats = [
            pool.submit(http.post, "/v1/chat/completions", headers=server.auth, json=_chat_body()) for _ in range(8)
        ]
        lists = [pool.submit(http.get, "/api/v1/conversations/", headers=server.auth) for _ in range(48)]
        answers = [f.result() for f in chats + lists]
    assert [a.status_code for a in answers] == [200] * len(answers), [
        a.text[:200] for a in answers if a.status_code != 200
    ]


# --- the tests -------------------------------------------------------------------------------


def test_a_restart_costs_at_most_the_requests_in_flight(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        _succeeds(server, http)
        _warm(server, http)
        time.sleep(0.5)  # every connection back in the pool, idle
        server.pg.restart()  # returns once PostgreSQL accepts connections again
        back = time.monotonic()
        first = http.get("/api/v1/conversations/", headers=server.auth)
        assert first.status_code == 200, (first.status_code, first.text[:300])
        assert time.monotonic() - back < 3, "the first request after a restart waited for dead connections"

        # Under load: requests in flight at the restart may fail (JSON 503), none that starts later.
        stop = time.monotonic() + 6
        answers: list[tuple[float, int]] = []

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                while time.monotonic() < stop:
                    started = time.monotonic()
                    response = own.get("/api/v1/conversations/", headers=server.auth)
                    _assert_json(response)
                    answers.append((started, response.status_code))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            loads = [pool.submit(load) for _ in range(4)]
            time.sleep(1.5)
            server.pg.restart()
            back = time.monotonic()
            for future in loads:
                future.result()
        after = [status for started, status in answers if started > back]
        assert after and set(after) == {200}, sorted(set(after))
        assert {status for _, status in answers} <= {200, 503}
        _succeeds(server, http)


def _served_within(server: Server, http: httpx.Client, seconds: float) -> None:
    """Requests succeed within `seconds` (each answer until then is JSON, never a 500)."""
    deadline = time.monotonic() + seconds
    while True:
        response = http.get("/api/v1/conversations/", headers=server.auth)
        _assert_json(response)
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, f"no success within {seconds} s"
        time.sleep(0.2)


def test_while_postgresql_is_down_every_api_request_answers_json_503_with_retry_after(server: Server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        _served_within(server, http, 30)  # whatever the test before left
        _succeeds(server, http)
        with ws_connect(server.ws_url, additional_headers=server.auth, open_timeout=10) as ws:
            assert _ws_turn(ws)["type"] == "generation.finished"
            server.pg.stop()
            try:
                requests = _requests(server, http)
                with concurrent.futures.ThreadPoolExecutor(len(requests) + 2) as pool:
                    futures = {name: pool.submit(call) for name, call in requests.items()}
                    sdk_models = pool.submit(lambda: server.openai().models.list())
                    sdk_chat = pool.submit(
                        lambda: server.openai().chat.completions.create(
                            model="demo", messages=[{"role": "user", "content": "Hi"}]
                        )
                    )
                    page = pool.submit(http.get, "/chat/", headers={"Cookie": f"sessionid={server.session}"})
                    new_socket = pool.submit(_ws_refused_unavailable, server)
                    frame = _ws_turn(ws)
                    for name, future in futures.items():
                        _assert_unavailable(future.result(), "openai" if name.startswith("v1") else "rest")
                    for future in (sdk_models, sdk_chat):
                        with pytest.raises(openai.InternalServerError) as raised:
                            future.result()
                        assert raised.value.status_code == 503
                        assert raised.value.code == "service_unavailable"
                        assert int(raised.value.response.headers["retry-after"]) >= 1
                    # a page: a plain 503 page, with the retry hint
                    assert page.result().status_code == 503, page.result().text[:300]
                    assert page.result().headers.get("retry-after", "").isdigit()
                    new_socket.result()
                # the websocket: an error frame with a retry hint, and the socket stays open
                assert frame["type"] == "error" and frame["code"] == "service_unavailable", frame
                assert isinstance(frame["retry_after"], int) and frame["retry_after"] >= 1, frame
                _ws_ping(ws)
            finally:
                server.pg.pg_ctl("start")
            # back: requests succeed again, the socket's next turn too
            _served_within(server, http, 30)
            _succeeds(server, http)
            assert _ws_turn(ws)["type"] == "generation.finished"
    assert server.process.poll() is None, server.log_tail()


# --- which failures are the database's (no server needed) ---------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: django_db.OperationalError("connection failed: Connection refused"),
        lambda: django_db.InterfaceError("connection already closed"),
        lambda: PoolTimeout("couldn't get a connection after 10.00 sec"),
        lambda: psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
        lambda: psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    ],
)
def test_a_database_outage_is_service_unavailable_on_every_interface(make):
    from config.errors import database_unavailable, openai_error_parts, rest_error_parts, ws_error_frame
    from config.exceptions import api_exception_handler

    exc = make()
    error = database_unavailable(exc)
    assert error is not None and error.code == "service_unavailable"
    status, body, headers = rest_error_parts(error)
    assert (status, body["error"]["code"], body["error"]["retry_after"]) == (503, "service_unavailable", 3)
    assert headers["Retry-After"] == "3"
    status, body, headers = openai_error_parts(error)
    assert (status, body["error"]["type"], body["error"]["code"]) == (503, "server_error", "service_unavailable")
    assert headers["Retry-After"] == "3"
    frame = ws_error_frame(error, "c1")
    assert (frame["code"], frame["retry_after"], frame["client_id"]) == ("service_unavailable", 3, "c1")
    response = api_exception_handler(exc, {})
    assert response.status_code == 503 and response["Retry-After"] == "3"
    # also when a service re-raises it as its own error
    try:
        try:
            raise exc
        except Exception as inner:
            raise RuntimeError("the turn could not start") from inner
    except RuntimeError as wrapped:
        assert database_unavailable(wrapped) is not None


@pytest.mark.parametrize(
    "exc",
    [
        django_db.IntegrityError("duplicate key value violates unique constraint"),
        django_db.ProgrammingError("relation does not exist"),
        django_db.DataError("value too long"),
        ValueError("a bug"),
    ],
)
def test_other_failures_are_not_an_outage(exc):
    from config.errors import database_unavailable
    from config.exceptions import api_exception_handler

    assert database_unavailable(exc) is None
    assert api_exception_handler(exc, {}) is None  # a bug: Django's 500 handling and logging
