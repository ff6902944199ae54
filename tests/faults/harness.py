"""Parley in its production shape on loopback, with the switches to break it.

`Cluster` starts, on free loopback ports under one throwaway folder:

- its own PostgreSQL (initdb, as scripts/test.sh does; as the `postgres` user when run as root) and
  its own Redis (no persistence, as compose.yaml runs it);
- the fake provider (tests/fakeprovider) in this process, every vendor pointing at it;
- a Celery worker (queues `celery` and `models`) and Celery beat (the DatabaseScheduler of the
  settings), both restarted when they exit, as compose's `restart: unless-stopped` does;
- two Daphne processes serving `config.asgi:application`.

and gives the faults: `redis.restart()`, `postgres.restart()`, `daphnes[i].kill()` (SIGKILL),
`fake.kill()` / `fake.start()`. Data is seeded through `manage.py shell` (the ORM of the real code),
and read back with plain SQL (`Cluster.sql`), one short connection each, so a read survives a
PostgreSQL restart.

Used by tests/faults (pytest) and bench/faults_recovery.py (numbers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakeprovider import FakeProviderServer
from tests.fakeprovider.plugin import FAKE_KEYS

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
BIN = ROOT / ".venv" / "bin"

# The aliases the suite uses, one per vendor format the fake speaks.
MODELS = {"openai": "gpt-5.2-instant", "anthropic": "claude-haiku-4-5", "gemini": "gemini-3-flash"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy (returns it); AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a service that is still coming up
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last_error!r})" if last_error else ""))
        time.sleep(interval)


# --- processes ---------------------------------------------------------------------------------


class Process:
    """One server process: its output in `logs/<name>.log`, its own process group."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], logs: Path,
                 ready: Callable[[], bool] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = logs / f"{name}.log"
        self.ready = ready
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.supervised = False  # restart it when it exits (Cluster's supervisor)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        log.write(f"\n=== start {self.starts + 1} at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.starts += 1
        if wait and self.ready is not None:
            deadline = time.monotonic() + timeout
            while not self._ready():
                if not self.alive:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while starting:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s:\n{self.tail()}")
                time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            return bool(self.ready())
        except Exception:
            return False

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, the whole process group (a crash: nothing runs its clean-up)."""
        was = self.supervised
        self.supervised = False
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.supervised = was

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        self.supervised = False
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Postgres:
    """A private PostgreSQL cluster (initdb once; start, stop and restart keep the data)."""

    def __init__(self, run: Path, port: int) -> None:
        self.run = run
        self.port = port
        self.data = run / "pgdata"
        self.log = run / "logs" / "postgres.log"
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))[-1]
        self.as_root = os.getuid() == 0

    def _run(self, command: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", command] if self.as_root else ["bash", "-c", command]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> None:
        self._run(f"{self.bin}/initdb -D {self.data} -U postgres --auth=trust -E UTF8 >/dev/null")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.run} -c listen_addresses=127.0.0.1 -c max_connections=500 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run(f"{self.bin}/pg_ctl -D {self.data} -l {self.log} -o '{options}' -w -t 60 start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: every session is ended at once (a restart or failover as clients see it)."""
        self._run(f"{self.bin}/pg_ctl -D {self.data} -m {mode} -w -t 60 stop")

    def restart(self, down: float = 3.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    @property
    def running(self) -> bool:
        return port_open(self.port)

    def url(self, database: str = "parley") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


class Redis:
    def __init__(self, run: Path, port: int) -> None:
        self.port = port
        self.process = Process(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(run)],
            env=dict(os.environ), logs=run / "logs", ready=lambda: self.ping(),
        )

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def start(self) -> None:
        self.process.start(timeout=20)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM); without persistence every key is gone, as in compose.yaml."""
        self.process.stop()

    def restart(self, down: float = 3.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Daphne(Process):
    def __init__(self, index: int, *, env: dict[str, str], logs: Path) -> None:
        self.port = free_port()
        super().__init__(
            f"daphne{index}",
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
            env=env, logs=logs, ready=self._healthy,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def _healthy(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.settimeout(3)
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(32).split(b" ")[1] == b"200"


# --- tenants -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    organization_id: str
    membership_id: str
    secret: str  # an API key


# The suite's data, written before any Parley process starts (they cache prices and the registry):
# two tiers whose rate limits never interfere (`faults`, and `faults-budget` with a small output cap
# for the budget tests), no fallbacks (a turn is served, and reserved, by the model it names, so
# the books are exact), and dear prices in effect from now: a budget of a few dollars then holds
# about ten turns, and one token reserved too few is already a measurable amount.
PREPARE = r"""
import json
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from accounts.models import Tier
from billing.models import Price
from llm.models import ModelConfig

args = json.loads(ARGS)
models = args["models"]
for slug, output in (("faults", 256), ("faults-budget", args["budget_output_tokens"])):
    Tier.objects.update_or_create(slug=slug, defaults=dict(
        name="Faults " + slug, monthly_budget_usd=Decimal("100000"), requests_per_minute=1_000_000,
        tokens_per_minute=1_000_000_000, allowed_models=["demo", *models], max_message_chars=100_000,
        max_output_tokens=output, features=["api"]))
ModelConfig.objects.filter(alias__in=models).update(fallbacks=[])
effective = timezone.now() - timedelta(minutes=1)
for alias, (inp, out) in args["prices"].items():
    Price.objects.create(model=alias, effective_at=effective, input_per_mtok=Decimal(inp),
                         output_per_mtok=Decimal(out), source="tests/faults")
"""

SEED = r"""
import json
from decimal import Decimal
from accounts.models import Membership, Tier, User
from accounts.services import api_key_create, organization_create
from billing.budgets import organization_budget_set

args = json.loads(ARGS)
tier = Tier.objects.get(slug=args["tier"])
out = []
for n, budget in enumerate(args["budgets"]):
    user = User.objects.create_user(email=f"{args['name']}-{n}@faults.invalid", password=None)
    organization = organization_create(name=f"{args['name']} {n}", owner=user, tier=tier)
    if budget is not None:
        organization_budget_set(organization=organization, monthly_limit_usd=Decimal(budget))
    membership = Membership.objects.select_related("organization__tier", "user").get(user=user)
    key, secret = api_key_create(membership=membership, name="faults")
    out.append({"organization_id": str(organization.id), "membership_id": str(membership.id), "secret": secret})
print("SEED=" + json.dumps(out))
"""

# USD per million tokens (input, output) of the suite's models, and the budget tier's output cap.
PRICES = {alias: ("200", "600") for alias in MODELS.values()}
BUDGET_OUTPUT_TOKENS = 32


# --- the cluster ---------------------------------------------------------------------------------


class Cluster:
    """PostgreSQL, Redis, the fake provider, a Celery worker and beat, and two Daphne processes."""

    def __init__(self, *, daphnes: int = 2, celery: bool = True, extra_env: dict[str, str] | None = None) -> None:
        self.run = Path(tempfile.mkdtemp(prefix="parley-faults-"))
        self.run.chmod(0o755)
        (self.run / "logs").mkdir()
        if os.getuid() == 0:
            shutil.chown(self.run, "postgres")
            shutil.chown(self.run / "logs", "postgres")
            (self.run / "logs").chmod(0o777)
        self.logs = self.run / "logs"
        self.postgres = Postgres(self.run, free_port())
        self.redis = Redis(self.run, free_port())
        self.fake = FakeProviderServer()
        self.extra_env = dict(extra_env or {})
        self._daphne_count = daphnes
        self._celery = celery
        self.daphnes: list[Daphne] = []
        self.worker: Process | None = None
        self.beat: Process | None = None
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarted: dict[str, int] = {}  # supervised processes that exited, and how often

    # --- lifecycle ---

    def start(self) -> Cluster:
        self.fake.start()
        self.postgres.init()
        self.postgres.start()
        self._create_database()
        self.redis.start()
        env = self.env()
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=300)
        self.manage("shell", "-c", PREPARE.replace("ARGS", repr(json.dumps({
            "models": list(MODELS.values()), "prices": PRICES, "budget_output_tokens": BUDGET_OUTPUT_TOKENS}))))
        self.daphnes = [Daphne(i, env=env, logs=self.logs) for i in range(self._daphne_count)]
        starting = [threading.Thread(target=d.start) for d in self.daphnes]
        for thread in starting:
            thread.start()
        if self._celery:
            self._start_celery(env)
        for thread in starting:
            thread.join()
        for daphne in self.daphnes:
            if not daphne.alive:
                raise RuntimeError(f"{daphne.name} did not start:\n{daphne.tail()}")
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, name="faults-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _start_celery(self, env: dict[str, str]) -> None:
        self.worker = Process(
            "worker",
            [PY, "-m", "celery", "-A", "config", "worker", "-Q", "celery,models", "--pool", "threads",
             "--concurrency", "4", "-l", "INFO", "-n", f"faults-{os.getpid()}@%h"],
            env=env, logs=self.logs,
        )
        self.beat = Process(
            "beat",
            [PY, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
             "--pidfile", str(self.run / "beat.pid"), "-s", str(self.run / "beat-schedule")],
            env=env, logs=self.logs,
        )
        self.worker.start(wait=False)
        self.beat.start(wait=False)
        self.worker.supervised = self.beat.supervised = True

    def close(self) -> None:
        self._supervising.clear()
        for process in [*self.daphnes, self.worker, self.beat]:
            if process is not None:
                process.stop(timeout=5)
        self.redis.stop()
        with contextlib.suppress(Exception):
            if self.postgres.running:
                self.postgres.stop("immediate")
        self.fake.stop()
        if not os.environ.get("PARLEY_FAULTS_KEEP"):
            shutil.rmtree(self.run, ignore_errors=True)

    def _supervise(self) -> None:
        """Restart the worker and beat when they exit (compose: restart: unless-stopped)."""
        while self._supervising.is_set():
            for process in (self.worker, self.beat):
                if process is not None and process.supervised and process.proc is not None and not process.alive:
                    self.restarted[process.name] = self.restarted.get(process.name, 0) + 1
                    time.sleep(1.0)
                    if self._supervising.is_set() and process.supervised:
                        process.start(wait=False)
            time.sleep(0.5)

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("DATABASE", "REDIS", "OPENAI", "ANTHROPIC", "GEMINI", "GOOGLE", "CELERY",
                                     "PARLEY_", "DJANGO_SETTINGS", "PYTEST", "DEBUG"))}
        env = {
            **keep,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": self.postgres.url(),
            "REDIS_URL": self.redis.url,
            "PARLEY_TESTING": "1",
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "DEBUG": "0",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **FAKE_KEYS,
            "OPENAI_BASE_URL": self.fake.openai_base_url,
            "ANTHROPIC_BASE_URL": self.fake.anthropic_base_url,
            "GEMINI_BASE_URL": self.fake.gemini_base_url,
            # A dead provider is noticed in seconds, not minutes; retries stay short.
            "PARLEY_LLM_CONNECT_TIMEOUT": "2",
            "PARLEY_LLM_FIRST_TOKEN_TIMEOUT": "10",
            "PARLEY_LLM_IDLE_TIMEOUT": "5",
            "PARLEY_LLM_RETRY_BASE_DELAY": "0.05",
            "PARLEY_LLM_RETRY_MAX_DELAY": "0.5",
            "PARLEY_DEMO_TOKEN_DELAY": "0.001",
        }
        env.update(self.extra_env)
        return env

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.postgres.url("postgres"), autocommit=True) as connection:
            connection.execute('CREATE DATABASE "parley"')

    # --- data ---

    def manage(self, *args: str, timeout: float = 120.0) -> str:
        result = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result.stdout

    def seed(self, *, name: str, budgets: list[str | None], tier: str = "faults") -> list[Tenant]:
        """Organizations on a tier of PREPARE, each with an owner and an API key; a budget (a decimal
        string, USD) overrides the organization's monthly budget."""
        args = json.dumps({"name": name, "budgets": budgets, "tier": tier})
        out = self.manage("shell", "-c", SEED.replace("ARGS", repr(args)))
        line = next(line for line in out.splitlines() if line.startswith("SEED="))
        return [Tenant(**row) for row in json.loads(line[5:])]

    def sql(self, query: str, params: tuple | list = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.postgres.url(), autocommit=True, connect_timeout=3) as connection:
            return connection.execute(query, params).fetchall()

    # --- views for checks ---

    def processes(self) -> Iterator[Process]:
        yield from self.daphnes
        if self.worker is not None:
            yield self.worker
        if self.beat is not None:
            yield self.beat

    def ensure_up(self) -> None:
        """Everything running again (a test that failed midway may have left a fault in place)."""
        if not self.fake.running:
            self.fake.start()
        if not self.postgres.running:
            self.postgres.start()
        if not self.redis.process.alive:
            self.redis.start()
        for daphne in self.daphnes:
            if not daphne.alive:
                daphne.start()
        for process in (self.worker, self.beat):
            if process is not None:
                process.supervised = True

    def logs_tail(self, lines: int = 30) -> str:
        return "\n\n".join(f"--- {p.name} ---\n{p.tail(lines)}" for p in self.processes())
