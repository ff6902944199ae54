"""The Celery worker and beat of compose.yaml survive a Redis restart and go on with the money sweeps.

A real worker and a real beat run as subprocesses with the commands compose.yaml ships (the `celery`
queue's worker: prefork, `-Q celery`), against a Redis of the test's own on a free port (so it can be
stopped without touching the suite's) and the suite's test database. The test:

1. sends `billing.reservations_release_expired` and sees an expired reservation released (the
   worker consumes from Redis and writes to PostgreSQL);
2. stops Redis for longer than beat's 15 s tick (so beat tries to send `conversations.turns_recover`
   while it is down) and starts it again on the same port;
3. sends `billing.reservations_release_expired` again and sees a second expired reservation released,
   and sees beat's `conversations.turns_recover` close a reservation whose process went silent (one
   made after the restart): the worker reconnected, and beat kept its clock.
Both processes are still the ones started at the beginning (no supervisor restarted them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery
from django.db import connection
from django.utils import timezone

from billing.models import Reservation, ReservationStatus
from tests.billing.conftest import authorize, ensure_test_model

ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
REDIS_DOWN_SECONDS = 17  # longer than beat's 15 s tick of conversations.turns_recover


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition: Callable[[], bool], timeout: float, what: str, *, logs: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = ""
            if logs is not None:
                tail = "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in sorted(logs.glob("*.log")))
            raise AssertionError(f"{what}: not within {timeout} s\n{tail}")
        time.sleep(0.25)


class PrivateRedis:
    """redis-server in the foreground on a free port; `restart()` stops it and starts it on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        _wait(self._answers, 10, "redis-server answers")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _compose_command(service: str) -> list[str]:
    command = list(SERVICES[service]["command"])
    assert command[0] == "celery"
    return [sys.executable, "-m", "celery", *command[1:]]


@pytest.fixture
def celery_processes(tmp_path, private_redis) -> Iterator[Callable[[str], subprocess.Popen]]:
    """`start("worker")` / `start("beat")`: compose.yaml's command for that service, as a subprocess on
    the private Redis and the test database; terminated (warm shutdown) afterwards."""
    db = connection.settings_dict
    assert db["ENGINE"].endswith("postgresql"), "run through scripts/test.sh (PostgreSQL)"
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    env = dict(os.environ)
    env.pop("DATABASE_TEST_NAME", None)
    env.update(
        DATABASE_URL=f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        DATABASE_POOL_MAX="4",
        REDIS_URL=private_redis.url,
        CELERY_TASK_ALWAYS_EAGER="0",
        PARLEY_TESTING="1",
        PYTHONPATH=str(ROOT),
    )
    processes: list[subprocess.Popen] = []

    def start(service: str) -> subprocess.Popen:
        log = open(tmp_path / f"{service}.log", "ab")  # noqa: SIM115 (closed with the process)
        # cwd: a folder of the test's own, for whatever beat or the worker write there.
        process = subprocess.Popen(
            _compose_command(service), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _reservation(member, **changes) -> Reservation:
    auth = authorize(member)
    Reservation.objects.filter(id=auth.reservation_id).update(**changes)
    reservation = Reservation.objects.get(id=auth.reservation_id)
    assert reservation.status == ReservationStatus.OPEN
    return reservation


def _closed(reservation: Reservation) -> Callable[[], bool]:
    return lambda: Reservation.objects.filter(id=reservation.id).exclude(status=ReservationStatus.OPEN).exists()


# serialized_rollback: the flush after this transactional test would drop the rows migrations seed
# (tiers, prices); like the other transactional tests, this one restores them.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_worker_and_beat_go_on_with_the_sweeps_after_a_redis_restart(org_a, tmp_path, private_redis, celery_processes):
    ensure_test_model()
    long_ago = timezone.now() - timedelta(hours=1)
    worker = celery_processes("worker")
    beat = celery_processes("beat")
    client = Celery("ops-test", broker=private_redis.url)
    client.conf.broker_connection_retry_on_startup = True
    node = f"celery@{socket.gethostname()}"
    _wait(
        lambda: bool(client.control.ping(destination=[node], timeout=1)), 60, "the worker answers ping", logs=tmp_path
    )

    def sweep() -> None:
        client.send_task(
            "billing.reservations_release_expired",
            queue="celery",
            retry=True,
            retry_policy={"max_retries": 20, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2},
        )

    # 1. The worker consumes from this Redis and writes to the test database.
    before = _reservation(org_a.member, expires_at=long_ago)
    sweep()
    _wait(_closed(before), 30, "the expired reservation is released before the restart", logs=tmp_path)
    assert Reservation.objects.get(id=before.id).status == ReservationStatus.EXPIRED

    # 2. Redis goes away for longer than a beat tick, and comes back on the same port.
    private_redis.stop()
    time.sleep(REDIS_DOWN_SECONDS)
    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
    assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-4000:]
    private_redis.start()

    # 3. A task sent after the restart is processed by the same worker.
    after = _reservation(org_a.member, expires_at=long_ago)
    sweep()
    _wait(_closed(after), 90, "the expired reservation is released after the restart", logs=tmp_path)
    assert Reservation.objects.get(id=after.id).status == ReservationStatus.EXPIRED

    # ... and beat, still ticking, has turns_recover close a turn whose process went silent (its
    # reservation is far from expiring, so only the recovery sweep can close it).
    silent = _reservation(org_a.member, created_at=long_ago, heartbeat_at=long_ago)
    assert silent.expires_at > timezone.now()
    _wait(_closed(silent), 60, "beat's turns_recover closes the silent turn's reservation", logs=tmp_path)
    assert Reservation.objects.get(id=silent.id).status != ReservationStatus.EXPIRED

    assert worker.poll() is None and beat.poll() is None
    log = (tmp_path / "worker.log").read_text()
    assert "Connection to broker lost" in log  # it did see Redis go away
