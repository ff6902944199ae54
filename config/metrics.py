"""Prometheus metrics: the few calls the engine and billing make, and the scrape output of `/metrics`.

Every recording function is cheap (a dictionary look-up and a lock) and never raises: a metric that
cannot be recorded must not fail a turn or a settlement. Label values are normalized to a small,
fixed vocabulary (or truncated), so a caller cannot blow up the number of series.

Open reservations are not counted here: they are read from the database at scrape time
(`ReservationCollector`), so the figure is the same whichever process is scraped, and true after a
process died holding some.

With `PROMETHEUS_MULTIPROC_DIR` set (before this module is first imported), prometheus-client keeps
the values in files of that folder and `render()` sums every process writing there — for a Celery
prefork worker, or several Daphne processes sharing one folder on one host. See docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from functools import wraps
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

ENTRIES = frozenset({"chat", "v1", "task"})
END_STATES = frozenset({"complete", "failed", "cancelled", "interrupted"})
REFUSALS = frozenset({"rate_limit", "budget"})
OTHER = "other"
# A reservation whose stream has not written its heartbeat for this long belongs to a dead process
# (the lead's recovery task settles it from what was recorded).
HEARTBEAT_STALE = timedelta(seconds=30)

TTFT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 600.0)

disable_created_metrics()  # no `_created` twin for every series: Prometheus does not use them

TURNS_STARTED = Counter("parley_turns_started", "Turns started, by entry point.", ["entry"])
TURNS = Counter("parley_turns", "Turns ended, by entry point and end state.", ["entry", "status"])
TTFT = Histogram(
    "parley_turn_ttft_seconds",
    "Time from the start of a turn to its first text delta.",
    ["entry"],
    buckets=TTFT_BUCKETS,
)
DURATION = Histogram(
    "parley_turn_duration_seconds", "Time from the start of a turn to its end, any end state.", ["entry"],
    buckets=DURATION_BUCKETS,
)  # fmt: skip
ACTIVE_STREAMS = Gauge(
    "parley_active_streams", "Turns streaming now in this process, by entry point.", ["entry"],
    multiprocess_mode="livesum",
)  # fmt: skip
PROVIDER_ERRORS = Counter(
    "parley_provider_errors", "Failed provider calls, by provider and error code.", ["provider", "code"]
)
REFUSALS_TOTAL = Counter("parley_refusals", "Turns refused before any provider call, by reason.", ["reason"])
SETTLEMENT_RETRIES = Counter("parley_settlement_retries", "Settlement attempts that failed and were retried.")
SETTLEMENTS_RECOVERED = Counter(
    "parley_settlements_recovered",
    "Turns settled by recovery from their recorded usage (crash, kill, lost connection).",
)

# Every known series exists from the start at 0, so rate() and alerts see the first event.
for _entry in ENTRIES:
    TURNS_STARTED.labels(_entry)
    ACTIVE_STREAMS.labels(_entry)
    for _status in END_STATES:
        TURNS.labels(_entry, _status)
for _reason in REFUSALS:
    REFUSALS_TOTAL.labels(_reason)

_lock = threading.Lock()
_streaming: dict[str, int] = {}  # this process's own turns, so a turn finished elsewhere never drives the gauge below 0
_warned: set[str] = set()

F = TypeVar("F", bound=Callable[..., None])


def _never_raises(function: F) -> F:
    @wraps(function)
    def safe(*args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception:  # a metric must never fail the work it measures
            if function.__name__ not in _warned:  # once per function, not once per token
                _warned.add(function.__name__)
                logger.warning("recording the metric %s failed", function.__name__, exc_info=True)

    return safe  # type: ignore[return-value]


def _known(value: object, allowed: frozenset[str]) -> str:
    text = str(value)
    return text if text in allowed else OTHER


def _label(value: object) -> str:
    """A free label (provider, error code): short, lowercase, never empty."""
    text = str(value or "").strip().lower()[:48]
    return text or "unknown"


def _seconds(value: float | None) -> float | None:
    if value is None:
        return None
    seconds = float(value.total_seconds()) if isinstance(value, timedelta) else float(value)
    return seconds if seconds >= 0 else None


@_never_raises
def turn_started(entry: str) -> None:
    """A turn of `entry` ("chat" | "v1" | "task") starts streaming in this process."""
    entry = _known(entry, ENTRIES)
    TURNS_STARTED.labels(entry).inc()
    with _lock:
        _streaming[entry] = _streaming.get(entry, 0) + 1
    ACTIVE_STREAMS.labels(entry).inc()


@_never_raises
def turn_finished(entry: str, status: str, *, ttft: float | None = None, duration: float | None) -> None:
    """A turn ended in `status` (complete | failed | cancelled | interrupted).

    `ttft` and `duration` are seconds (floats or timedeltas); `ttft` is None when no text came.
    Finishing a turn that this process did not start (recovery of a dead process's answers) counts
    it and its times but leaves the active-streams gauge alone.
    """
    entry = _known(entry, ENTRIES)
    TURNS.labels(entry, _known(status, END_STATES)).inc()
    first = _seconds(ttft)
    if first is not None:
        TTFT.labels(entry).observe(first)
    total = _seconds(duration)
    if total is not None:
        DURATION.labels(entry).observe(total)
    with _lock:
        mine = _streaming.get(entry, 0) > 0
        if mine:
            _streaming[entry] -= 1
    if mine:
        ACTIVE_STREAMS.labels(entry).dec()


@_never_raises
def provider_error(provider: str, code: str) -> None:
    """A provider call failed (`code`: Parley's error code, e.g. "rate_limited", "upstream_timeout")."""
    PROVIDER_ERRORS.labels(_label(provider), _label(code)).inc()


@_never_raises
def refusal(reason: str) -> None:
    """A turn was refused before any provider call: "rate_limit" or "budget"."""
    REFUSALS_TOTAL.labels(_known(reason, REFUSALS)).inc()


@_never_raises
def settlement_retry() -> None:
    """A settlement's database write failed and will be retried."""
    SETTLEMENT_RETRIES.inc()


@_never_raises
def settlement_recovered(n: int = 1) -> None:
    """`n` turns that ended without settlement were settled from their recorded usage."""
    if n > 0:
        SETTLEMENTS_RECOVERED.inc(n)


# --- scrape time -----------------------------------------------------------------------------------


class ReservationCollector(Collector):
    """Open budget reservations, read from the database at each scrape.

    `parley_open_reservations`, `parley_open_reservations_amount_usd`,
    `parley_stale_reservations` (open, with no heartbeat for 30 s — or, before reservations carry a
    heartbeat, open past their expiry), `parley_oldest_open_reservation_age_seconds`, and
    `parley_reservations_scrape_ok` (0 when the database could not be read: the others are then
    absent, never a misleading 0).
    """

    def describe(self) -> Iterable[Metric]:  # lets a registry check names without a database query
        return self._families()

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("parley_open_reservations", "Budget reservations held now (open)."),
            GaugeMetricFamily("parley_open_reservations_amount_usd", "Sum of the open reservations' amounts, USD."),
            GaugeMetricFamily(
                "parley_stale_reservations",
                "Open reservations whose stream has not written a heartbeat for 30 s (a dead process's).",
            ),
            GaugeMetricFamily(
                "parley_oldest_open_reservation_age_seconds", "Age of the oldest open reservation (0 when none)."
            ),
            GaugeMetricFamily("parley_reservations_scrape_ok", "1 when the reservations could be read at this scrape."),
        ]

    def collect(self) -> Iterable[Metric]:
        count, amount, stale, oldest, ok = self._families()
        try:
            row = _open_reservations()
        except Exception:  # the database is down or restarting: say so, do not fail the scrape
            logger.warning("reading open reservations for /metrics failed", exc_info=True)
            ok.add_metric([], 0)
            return [ok]
        count.add_metric([], row["count"])
        amount.add_metric([], float(row["amount"]))
        stale.add_metric([], row["stale"])
        oldest.add_metric([], row["oldest_age"])
        ok.add_metric([], 1)
        return [count, amount, stale, oldest, ok]


def _open_reservations() -> dict:
    # Imported here: apps import this module, so it must not import their models at load time.
    from decimal import Decimal

    from django.db.models import Count, Min, Q, Sum
    from django.db.models.functions import Coalesce
    from django.utils import timezone

    from billing.models import Reservation, ReservationStatus

    now = timezone.now()
    if hasattr(Reservation, "heartbeat_at"):
        stale = Q(alive_at__lt=now - HEARTBEAT_STALE)
        rows = Reservation.objects.filter(status=ReservationStatus.OPEN).annotate(
            alive_at=Coalesce("heartbeat_at", "created_at")
        )
    else:  # before reservations carry a heartbeat: open past their expiry is what should not be
        stale = Q(expires_at__lt=now)
        rows = Reservation.objects.filter(status=ReservationStatus.OPEN)
    row = rows.aggregate(
        count=Count("id"), amount=Sum("amount"), stale=Count("id", filter=stale), oldest=Min("created_at")
    )
    oldest = row["oldest"]
    return {
        "count": row["count"] or 0,
        "amount": row["amount"] or Decimal(0),
        "stale": row["stale"] or 0,
        "oldest_age": max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
    }


class _Delegate(Collector):
    def __init__(self, source: Collector):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


def _process_metrics() -> Collector:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return registry
    return REGISTRY


def render(accept: str = "", *, reservations: bool = True) -> tuple[bytes, str]:
    """The scrape body and its content type (Prometheus text, or OpenMetrics when `accept` asks)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Delegate(_process_metrics()))
    if reservations:
        registry.register(ReservationCollector())
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """A metrics HTTP server of the process's own (a thread), for processes that serve no /metrics:
    the Celery worker. No reservations (the web processes report those) and no token: bind it to an
    internal address."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Delegate(_process_metrics()))
    start_http_server(port, addr=addr, registry=registry)


def mark_process_dead(pid: int) -> None:
    """For `PROMETHEUS_MULTIPROC_DIR`: forget a dead worker child's live gauges (Celery's
    worker_process_shutdown, gunicorn's child_exit)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
