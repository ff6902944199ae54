"""The production setup as shipped: compose.yaml's contract, and deploy/'s nginx and systemd files.

compose.yaml is read as YAML (Docker cannot run here): only the proxy publishes ports, several Daphne
processes sit behind it, every long-running service restarts, the `celery` and `models` queues have
workers of their own, and there is exactly one beat.

The nginx configurations are checked with the real nginx (Debian's, installed by scripts/test.sh):
`nginx -t` on each, then each one runs in front of a small ASGI echo server (uvicorn, in a thread)
that reports the headers it received. Through them: Host, X-Forwarded-For and X-Forwarded-Proto
arrive; a websocket handshake upgrades and echoes; an SSE event arrives while its stream is still
open (no buffering); a dead Daphne is skipped; with none left, /api and /v1 answer JSON 503 in their
own error shapes with Retry-After; /metrics is not proxied; bodies up to Parley's own limit pass and
absurd ones get a JSON 413. The compose configurations name their upstream `app:8000` (Docker's
DNS); the tests point that one string at the echo server and the listening ports at free ones, and
assert each substitution matched exactly once.

The systemd units pass `systemd-analyze verify` (with /opt/parley pointed at this checkout).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from django.conf import settings
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
ONE_SHOT = {"migrate"}  # runs to completion before the others start


def _default(value) -> str:
    """`${VAR:-default}` as Compose resolves it with VAR unset (other text unchanged)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _command(name: str) -> list[str]:
    command = SERVICES[name].get("command")
    assert isinstance(command, list), f"{name}: command must be a list"
    return [_default(part) for part in command]


def _celery_workers() -> dict[str, list[str]]:
    """Service name -> the queues its worker consumes (-Q)."""
    workers = {}
    for name in SERVICES:
        command = SERVICES[name].get("command") or []
        if command[:4] == ["celery", "-A", "config", "worker"]:
            assert "-Q" in command, f"{name}: a worker names its queues"
            workers[name] = command[command.index("-Q") + 1].split(",")
    return workers


# --- compose.yaml -------------------------------------------------------------------------------


def test_only_the_proxy_publishes_ports():
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"proxy"}
    assert SERVICES["proxy"]["image"].startswith("nginx:")
    assert [_default(p) for p in SERVICES["proxy"]["ports"]] == ["80:80", "443:443"]


def test_several_daphne_processes_behind_the_proxy():
    apps = [name for name in SERVICES if (SERVICES[name].get("command") or [""])[0] == "daphne"]
    assert apps == ["app"]
    replicas = int(_default(SERVICES["app"]["deploy"]["replicas"]))
    assert replicas >= 2
    assert "container_name" not in SERVICES["app"]  # replicas need generated names
    command = _command("app")
    assert "--proxy-headers" in command and command[-1] == "config.asgi:application"
    assert command[command.index("-p") + 1] == "8000"
    # The proxy mounts deploy/ and selects one of its configurations (plain HTTP by default).
    assert "./deploy:/etc/nginx/parley:ro" in SERVICES["proxy"]["volumes"]
    proxy = _command("proxy")
    assert proxy[:3] == ["nginx", "-c", "/etc/nginx/parley/nginx.conf"]
    assert (DEPLOY / "nginx.conf").is_file() and (DEPLOY / "nginx-tls.conf").is_file()
    for config in ("nginx.conf", "nginx-tls.conf"):
        assert "set $parley_upstream app:8000;" in (DEPLOY / config).read_text()


def test_every_long_running_service_restarts_and_is_health_checked():
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert service.get("restart") in {"unless-stopped", "always"}, name
        if name != "beat":  # beat answers no ping
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert _command("migrate") == ["python", "manage.py", "migrate", "--noinput"]
    for name in ("app", "worker", "worker-models", "beat"):
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # The worker health checks ping their own node by name.
    assert "celery@$$HOSTNAME" in SERVICES["worker"]["healthcheck"]["test"][1]
    assert "models@$$HOSTNAME" in SERVICES["worker-models"]["healthcheck"]["test"][1]
    assert "celery@%h" in _command("worker") and "models@%h" in _command("worker-models")
    # The prefork children's metrics go to a folder that each start empties (docs/operations.md).
    for name in ("worker", "worker-models"):
        folder = SERVICES[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert SERVICES[name]["tmpfs"] == [folder]
        assert SERVICES[name]["environment"]["DATABASE_URL"] == SERVICES["app"]["environment"]["DATABASE_URL"]


def test_slow_model_work_and_money_sweeps_have_workers_of_their_own():
    from config.celery import app

    workers = _celery_workers()
    assert workers == {"worker": ["celery"], "worker-models": ["models"]}
    assert settings.CELERY_TASK_DEFAULT_QUEUE == "celery"

    def queue_of(task: str) -> str:
        return app.amqp.router.route({}, task)["queue"].name

    assert queue_of("conversations.tasks.conversation_title") == "models"
    assert queue_of("conversations.tasks.conversation_summarize") == "models"
    sweeps = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"conversations.turns_recover", "billing.reservations_release_expired"} <= sweeps
    for task in sweeps:
        assert queue_of(task) == "celery", task
    # Every queue a task can be routed to has a worker.
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {"celery"}
    assert routed <= {queue for queues in workers.values() for queue in queues}


def test_exactly_one_beat():
    beats = [
        name for name in SERVICES if (SERVICES[name].get("command") or [])[:4] == ["celery", "-A", "config", "beat"]
    ]
    assert beats == ["beat"]
    assert "deploy" not in SERVICES["beat"] and "ports" not in SERVICES["beat"]


# --- nginx ----------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _nginx() -> str:
    assert Path(NGINX).exists(), "nginx is missing: scripts/test.sh installs it (apt-get install nginx)"
    return NGINX


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sub(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, f"expected {count} × {old!r} in the configuration"
    return text.replace(old, new)


def _nginx_t(config: Path) -> None:
    result = subprocess.run([_nginx(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.fixture
def deploy_copy(tmp_path) -> Path:
    """deploy/ copied aside, with a throwaway self-signed certificate in certs/ (as the TLS variant expects)."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    (copy / "certs").mkdir(exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(copy / "certs" / "privkey.pem"), "-out", str(copy / "certs" / "fullchain.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tmp_path.chmod(0o755)
    return copy


def _host_site(directory: Path, *, servers: list[int], listen: int) -> Path:
    """deploy/nginx-host.conf with its Daphne ports and listen port replaced, wrapped in a main config."""
    site = (DEPLOY / "nginx-host.conf").read_text()
    site = _sub(site, "include /opt/parley/deploy/nginx-parley.conf;", f"include {directory}/nginx-parley.conf;")
    site = _sub(site, "    listen 80;\n", f"    listen 127.0.0.1:{listen};\n")
    site = _sub(site, "server 127.0.0.1:8001 ", f"server 127.0.0.1:{servers[0]} ")
    site = _sub(site, "server 127.0.0.1:8002 ", f"server 127.0.0.1:{servers[1]} ")
    (directory / "site.conf").write_text(site)
    main = directory / "host-main.conf"
    main.write_text(f"events {{}}\nhttp {{\n    include {directory}/site.conf;\n}}\n")
    return main


def test_nginx_accepts_every_configuration(deploy_copy):
    _nginx_t(deploy_copy / "nginx.conf")
    _nginx_t(deploy_copy / "nginx-tls.conf")
    _nginx_t(_host_site(deploy_copy, servers=[8001, 8002], listen=8080))


def test_the_proxy_rules_keep_streams_open():
    rules = (DEPLOY / "nginx-parley.conf").read_text()
    # Buffering off (the SSE test below passes a small event through either way on nginx 1.22, so the
    # directive itself is checked: with buffering, nginx may hold events back, e.g. for a slow client).
    assert re.search(r"^proxy_buffering off;$", rules, re.M)
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(rf"^{directive} (\d+)([smh]);", rules, re.M)
        assert value, directive
        seconds = int(value.group(1)) * {"s": 1, "m": 60, "h": 3600}[value.group(2)]
        assert seconds >= 600, f"{directive}: a quiet stream must not be cut after {seconds} s"


# An upstream that reports what it got: JSON of the request's headers, a websocket echo, and an SSE
# stream whose second event waits until the test has read the first one through the proxy.
SSE_RELEASE = threading.Event()


async def echo_app(scope, receive, send):
    headers = {key.decode().lower(): value.decode() for key, value in scope.get("headers", [])}
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send(
                {"type": "websocket.send", "text": json.dumps({"echo": message.get("text"), "headers": headers})}
            )
    if scope["type"] != "http":
        return
    if scope["path"] == "/api/v1/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"event: first\ndata: 1\n\n", "more_body": True})
        await asyncio.to_thread(SSE_RELEASE.wait, 10)
        await send({"type": "http.response.body", "body": b"event: last\ndata: 2\n\n"})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"path": scope["path"], "headers": headers, "body_bytes": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def upstream() -> Iterator[int]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(echo_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the echo server did not start"
        time.sleep(0.02)
    SSE_RELEASE.clear()
    yield port
    SSE_RELEASE.set()
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def run_nginx(tmp_path):
    """`run_nginx(main_config)`: nginx in the foreground on that configuration, stopped afterwards."""
    processes: list[subprocess.Popen] = []

    def start(config: Path, ports: list[int]) -> None:
        _nginx_t(config)
        log = open(tmp_path / f"nginx-{len(processes)}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [_nginx(), "-c", str(config), "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
        )
        processes.append(process)
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                assert process.poll() is None, (tmp_path / f"nginx-{len(processes) - 1}.log").read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"nginx is not listening on {port}"
                    time.sleep(0.05)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _own_pid(config: Path, directory: Path) -> Path:
    """A copy of a compose configuration with its own pid file (so parallel runs do not share /tmp/nginx.pid)."""
    text = _sub(config.read_text(), "pid /tmp/nginx.pid;", f"pid {directory}/nginx.pid;")
    config.write_text(text)
    return config


def _get(port: int, path: str, headers: dict | None = None, *, tls: bool = False) -> http.client.HTTPResponse:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def test_host_proxy_forwards_headers_skips_a_dead_daphne_and_streams(deploy_copy, upstream, run_nginx):
    listen, dead = _free_port(), _free_port()
    run_nginx(_host_site(deploy_copy, servers=[dead, upstream], listen=listen), [listen])

    # Every request is answered although one of the two Daphne ports refuses connections.
    for _ in range(6):
        response = _get(listen, "/chat/", {"Host": "parley.test:8080", "X-Forwarded-For": "203.0.113.9"})
        assert response.status == 200, response.body
        seen = json.loads(response.body)["headers"]
        assert seen["host"] == "parley.test:8080"  # with its port, as the browser sent it
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"

    # A websocket handshake is upgraded and passed through, with the same headers.
    with ws_connect(f"ws://127.0.0.1:{listen}/ws/chat/") as ws:
        ws.send("hello")
        reply = json.loads(ws.recv(timeout=10))
    assert reply["echo"] == "hello"
    assert reply["headers"]["host"] == f"127.0.0.1:{listen}" and reply["headers"]["x-forwarded-proto"] == "http"
    assert reply["headers"]["upgrade"].lower() == "websocket"

    # An SSE event arrives while the upstream still holds its stream open: nothing is buffered.
    with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
        sock.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: parley.test\r\n\r\n")
        received = b""
        while b"event: first" not in received:
            chunk = sock.recv(65536)  # times out (fails) if nginx holds the event back
            assert chunk, received
            received += chunk
        assert b"event: last" not in received
        SSE_RELEASE.set()
        while b"event: last" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk

    # /metrics is not proxied (each Daphne is scraped directly).
    assert _get(listen, "/metrics").status == 404

    # A body of Parley's own limit (4 MiB) passes; an absurd one is refused as JSON in each API's shape.
    connection = http.client.HTTPConnection("127.0.0.1", listen, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=b"x" * (5 * 1024 * 1024), headers={"Host": "parley.test"})
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["body_bytes"] == 5 * 1024 * 1024
    connection.close()
    for path, shape in (("/v1/chat/completions", "openai"), ("/api/v1/conversations/", "rest")):
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: parley.test\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n".encode()
            )
            raw = b""
            while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"application/json" in head
        error = json.loads(body)["error"]
        assert error["code"] == "payload_too_large"
        assert ("type" in error) == (shape == "openai")


def test_with_every_daphne_down_the_apis_answer_json_503(deploy_copy, run_nginx):
    listen = _free_port()
    run_nginx(_host_site(deploy_copy, servers=[_free_port(), _free_port()], listen=listen), [listen])

    openai = _get(listen, "/v1/models", {"Host": "parley.test"})
    assert openai.status == 503 and openai.getheader("Retry-After") == "5"
    assert openai.getheader("Content-Type") == "application/json"
    assert json.loads(openai.body) == {
        "error": {
            "message": "Parley cannot serve the request right now; retry later.",
            "type": "server_error",
            "code": "service_unavailable",
            "param": None,
        }
    }
    rest = _get(listen, "/api/v1/conversations/", {"Host": "parley.test"})
    assert rest.status == 503 and rest.getheader("Retry-After") == "5"
    assert json.loads(rest.body) == {
        "error": {
            "code": "service_unavailable",
            "message": "Parley cannot serve the request right now; retry later.",
            "retry_after": 5,
        }
    }
    # The same code and shape as Parley's own service_unavailable (docs/errors.md).
    from config.errors import ParleyError, openai_error_parts, rest_error_parts

    error = ParleyError("x", code="service_unavailable", retry_after=5)
    assert openai_error_parts(error)[0] == 503 and openai_error_parts(error)[1]["error"]["type"] == "server_error"
    assert set(rest_error_parts(error)[1]["error"]) == {"code", "message", "retry_after"}
    # A web page is nginx's own 502.
    assert _get(listen, "/chat/", {"Host": "parley.test"}).status == 502


def test_compose_proxy_plain_http_keeps_the_tls_terminators_scheme(deploy_copy, upstream, run_nginx):
    listen = _free_port()
    config = _own_pid(deploy_copy / "nginx.conf", deploy_copy)
    text = _sub(config.read_text(), "set $parley_upstream app:8000;", f"set $parley_upstream 127.0.0.1:{upstream};")
    config.write_text(_sub(text, "listen 80 default_server;", f"listen 127.0.0.1:{listen} default_server;"))
    run_nginx(config, [listen])

    plain = json.loads(_get(listen, "/", {"Host": "localhost"}).body)["headers"]
    assert plain["x-forwarded-proto"] == "http" and plain["host"] == "localhost"
    behind_tls = json.loads(_get(listen, "/", {"Host": "parley.test", "X-Forwarded-Proto": "https"}).body)["headers"]
    assert behind_tls["x-forwarded-proto"] == "https"
    assert _get(listen, "/nginx-health").body == b"ok\n"
    with ws_connect(f"ws://127.0.0.1:{listen}/ws/chat/") as ws:
        ws.send("hi")
        assert json.loads(ws.recv(timeout=10))["echo"] == "hi"


def test_compose_proxy_with_tls_redirects_http_and_sends_https(deploy_copy, upstream, run_nginx):
    http_port, https_port = _free_port(), _free_port()
    config = _own_pid(deploy_copy / "nginx-tls.conf", deploy_copy)
    text = _sub(config.read_text(), "set $parley_upstream app:8000;", f"set $parley_upstream 127.0.0.1:{upstream};", 2)
    text = _sub(text, "listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;")
    config.write_text(
        _sub(text, "listen 443 ssl http2 default_server;", f"listen 127.0.0.1:{https_port} ssl http2 default_server;")
    )
    run_nginx(config, [http_port, https_port])

    redirect = _get(http_port, "/chat/?x=1", {"Host": "parley.test"})
    assert redirect.status == 301 and redirect.getheader("Location") == "https://parley.test/chat/?x=1"
    # The probes answer over plain HTTP (Parley exempts them from its own redirect).
    probe = _get(http_port, "/healthz", {"Host": "parley.test"})
    assert probe.status == 200 and json.loads(probe.body)["path"] == "/healthz"

    # Over TLS the scheme is the connection's own, whatever the client claims.
    seen = json.loads(_get(https_port, "/chat/", {"Host": "parley.test", "X-Forwarded-Proto": "http"}, tls=True).body)
    assert seen["headers"]["x-forwarded-proto"] == "https" and seen["headers"]["host"] == "parley.test"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with ws_connect(f"wss://127.0.0.1:{https_port}/ws/chat/", ssl=context) as ws:
        ws.send("secure")
        reply = json.loads(ws.recv(timeout=10))
    assert reply["echo"] == "secure" and reply["headers"]["x-forwarded-proto"] == "https"


# --- systemd ----------------------------------------------------------------------------------------

UNITS = DEPLOY / "systemd"


def _exec_start(unit: str) -> str:
    match = re.search(r"^ExecStart=(.+)$", (UNITS / unit).read_text(), re.M)
    assert match, unit
    return match.group(1)


def test_systemd_units_split_the_queues_and_restart():
    assert "-Q celery -n celery@%%h" in _exec_start("parley-worker.service")
    assert "-Q models -n models@%%h" in _exec_start("parley-worker-models.service")
    assert _exec_start("parley-beat.service").endswith("celery -A config beat -l info")
    assert "daphne -b 127.0.0.1 -p %i --proxy-headers config.asgi:application" in _exec_start("parley-web@.service")
    for unit in ("parley-web@.service", "parley-worker.service", "parley-worker-models.service", "parley-beat.service"):
        assert re.search(r"^Restart=always$", (UNITS / unit).read_text(), re.M), unit
    # Every Daphne port of the host proxy's upstream is a parley-web@PORT instance.
    ports = re.findall(r"server 127\.0\.0\.1:(\d+) ", (DEPLOY / "nginx-host.conf").read_text())
    assert ports == ["8001", "8002"]


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd package)"
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/parley", str(ROOT)))
    shutil.copy(tmp_path / "parley-web@.service", tmp_path / "parley-web@8001.service")
    names = [str(tmp_path / name) for name in (
        "parley-web@8001.service", "parley-worker.service", "parley-worker-models.service",
        "parley-beat.service", "parley.target",
    )]  # fmt: skip
    result = subprocess.run([analyze, "verify", *names], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
