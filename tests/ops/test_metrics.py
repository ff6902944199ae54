"""Prometheus metrics: who may scrape /metrics, what the recording calls produce, and the open
reservations read from the database at scrape time."""

import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Reservation
from config import metrics

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-the-test-0123456789"


@pytest.fixture
def no_token(settings, monkeypatch):
    settings.METRICS_TOKEN = ""
    monkeypatch.delenv("METRICS_TOKEN", raising=False)


@pytest.fixture
def with_token(settings, monkeypatch):
    settings.METRICS_TOKEN = TOKEN
    monkeypatch.delenv("METRICS_TOKEN", raising=False)


def scrape(address="127.0.0.1", **headers):
    return Client(REMOTE_ADDR=address).get("/metrics", **headers)


def samples(response) -> dict[tuple[str, tuple], float]:
    assert response.status_code == 200, response.content[:200]
    out = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- who may scrape --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "172.18.0.4", "192.168.1.9", "::ffff:127.0.0.1"])
def test_without_a_token_loopback_and_private_callers_get_prometheus_text(no_token, address):
    response = scrape(address)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE parley_turns_total counter" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["203.0.113.7", "8.8.8.8", "2001:db8::1", "not-an-address", ""])
def test_without_a_token_outside_callers_get_a_plain_404(no_token, address):
    response = scrape(address)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/plain")
    assert b"parley_" not in response.content and b"<html" not in response.content.lower()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    ["HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED"],
    ids=["x-forwarded-for", "x-real-ip", "forwarded"],
)
def test_without_a_token_a_request_relayed_by_a_proxy_is_refused_even_from_a_private_address(no_token, header):
    # Behind nginx REMOTE_ADDR is the proxy's private address: the forwarding header gives it away.
    response = scrape("172.18.0.2", **{header: "127.0.0.1"})
    assert response.status_code == 404


@pytest.mark.django_db
def test_with_a_token_the_bearer_token_is_required_from_anywhere(with_token):
    assert scrape("127.0.0.1").status_code == 404  # loopback alone is not enough once a token is set
    assert scrape("127.0.0.1", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    assert scrape("127.0.0.1", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 404
    assert scrape("127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 404
    assert scrape("203.0.113.7", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert scrape("127.0.0.1", HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200


@pytest.mark.django_db
def test_the_token_may_come_from_the_environment(settings, monkeypatch):
    if hasattr(settings, "METRICS_TOKEN"):
        del settings.METRICS_TOKEN
    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    assert scrape("127.0.0.1").status_code == 404
    assert scrape("203.0.113.7", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.django_db
def test_other_methods_answer_plain_text_never_the_csrf_html_page(no_token):
    outside = Client(REMOTE_ADDR="203.0.113.7", enforce_csrf_checks=True).post("/metrics")
    assert outside.status_code == 404 and outside["Content-Type"].startswith("text/plain")
    inside = Client(REMOTE_ADDR="127.0.0.1", enforce_csrf_checks=True).post("/metrics")
    assert inside.status_code == 405 and inside["Content-Type"].startswith("text/plain")


@pytest.mark.django_db
def test_a_failing_render_is_a_plain_503(no_token, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("registry exploded")

    monkeypatch.setattr("config.health.render", broken)
    response = scrape()
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/plain")
    assert b"exploded" not in response.content


@pytest.mark.django_db
def test_openmetrics_is_served_when_asked(no_token):
    response = scrape(HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.rstrip().endswith(b"# EOF")


# --- the recording calls ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_recorded_events_appear_with_their_names_and_labels(no_token):
    before = samples(scrape())
    metrics.turn_started("v1")
    metrics.turn_finished("v1", "complete", ttft=0.2, duration=1.5)
    metrics.turn_started("chat")
    metrics.turn_finished("chat", "interrupted", ttft=None, duration=timedelta(seconds=7))
    metrics.turn_started("task")
    metrics.provider_error("OpenAI", "rate_limited")
    metrics.refusal("budget")
    metrics.refusal("rate_limit")
    metrics.settlement_retry()
    metrics.settlement_recovered(3)
    after = samples(scrape())

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("parley_turns_started_total", entry="v1") == 1
    assert delta("parley_turns_total", entry="v1", status="complete") == 1
    assert delta("parley_turns_total", entry="chat", status="interrupted") == 1
    assert delta("parley_turn_ttft_seconds_count", entry="v1") == 1
    assert delta("parley_turn_ttft_seconds_count", entry="chat") == 0  # no text, no time to first token
    assert delta("parley_turn_ttft_seconds_bucket", entry="v1", le="0.25") == 1
    assert delta("parley_turn_duration_seconds_count", entry="chat") == 1
    assert delta("parley_turn_duration_seconds_sum", entry="chat") == pytest.approx(7)
    assert delta("parley_active_streams", entry="task") == 1  # started, not finished
    assert delta("parley_active_streams", entry="v1") == 0
    assert delta("parley_provider_errors_total", provider="openai", code="rate_limited") == 1
    assert delta("parley_refusals_total", reason="budget") == 1
    assert delta("parley_refusals_total", reason="rate_limit") == 1
    assert delta("parley_settlement_retries_total") == 1
    assert delta("parley_settlements_recovered_total") == 3
    metrics.turn_finished("task", "cancelled", duration=0.1)


def test_every_known_series_exists_at_zero_before_any_event():
    for entry in metrics.ENTRIES:
        assert REGISTRY.get_sample_value("parley_turns_started_total", {"entry": entry}) is not None
        for status in metrics.END_STATES:
            assert REGISTRY.get_sample_value("parley_turns_total", {"entry": entry, "status": status}) is not None
    for reason in metrics.REFUSALS:
        assert REGISTRY.get_sample_value("parley_refusals_total", {"reason": reason}) is not None


def test_unknown_label_values_fold_into_other_so_series_stay_bounded():
    before = value("parley_turns_total", entry="other", status="other")
    metrics.turn_started("websocket-from-mars")
    metrics.turn_finished("websocket-from-mars", "exploded", duration=1)
    metrics.refusal("because")
    assert value("parley_turns_total", entry="other", status="other") == before + 1
    assert value("parley_active_streams", entry="other") == 0
    long = "x" * 500
    metrics.provider_error(long, "")
    assert value("parley_provider_errors_total", provider="x" * 48, code="unknown") >= 1


def test_a_turn_finished_by_another_process_never_drives_active_streams_below_zero():
    start = value("parley_active_streams", entry="chat")
    metrics.turn_finished("chat", "interrupted", duration=40)  # recovery of a dead process's answer
    assert value("parley_active_streams", entry="chat") == start
    metrics.turn_started("chat")
    assert value("parley_active_streams", entry="chat") == start + 1
    metrics.turn_finished("chat", "complete", duration=1)
    metrics.turn_finished("chat", "complete", duration=1)
    assert value("parley_active_streams", entry="chat") == start


def test_the_recording_calls_never_raise(caplog, monkeypatch):
    monkeypatch.setattr(metrics, "_warned", set())
    metrics.turn_finished("chat", "complete", ttft="soon", duration=object())  # type: ignore[arg-type]
    metrics.settlement_recovered("many")  # type: ignore[arg-type]
    metrics.turn_finished("chat", "complete", ttft="soon", duration=object())  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.name == "config.metrics"]
    assert len(warnings) == 2  # once per function, not once per call
    assert {r.args[0] for r in warnings} == {"turn_finished", "settlement_recovered"}


def test_several_processes_sharing_a_multiprocess_folder_are_summed(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR (a Celery prefork worker, or Daphne processes on one host)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = (
        "from config import metrics; metrics.turn_started('v1'); metrics.refusal('budget');"
        "metrics.settlement_recovered(2)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", record], env=env, cwd=ROOT, check=True, timeout=60)
    render = "from config import metrics; print(metrics.render(reservations=False)[0].decode())"
    out = subprocess.run(
        [sys.executable, "-c", render], env=env, cwd=ROOT, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }
    assert found[("parley_turns_started_total", (("entry", "v1"),))] == 2
    assert found[("parley_refusals_total", (("reason", "budget"),))] == 2
    assert found[("parley_settlements_recovered_total", ())] == 4


# --- open reservations, from the database ----------------------------------------------------------


def _reservations(response) -> dict[str, float]:
    found = samples(response)
    names = [
        "parley_open_reservations",
        "parley_open_reservations_amount_usd",
        "parley_stale_reservations",
        "parley_oldest_open_reservation_age_seconds",
        "parley_reservations_scrape_ok",
    ]
    return {name: found[(name, ())] for name in names if (name, ()) in found}


def _age(reservation_id, seconds: int) -> None:
    """Make a reservation look abandoned: no heartbeat (or, before heartbeats, no time left) for `seconds`."""
    past = timezone.now() - timedelta(seconds=seconds)
    fields = {"created_at": past}
    if hasattr(Reservation, "heartbeat_at"):
        fields["heartbeat_at"] = past
    else:
        fields["expires_at"] = past
    Reservation.objects.filter(id=reservation_id).update(**fields)


@pytest.mark.django_db
def test_open_reservations_are_read_from_the_database_at_scrape_time(no_token, org_a):
    from tests.billing.conftest import authorize, ensure_test_model, settle

    ensure_test_model()
    assert _reservations(scrape()) == {
        "parley_open_reservations": 0,
        "parley_open_reservations_amount_usd": 0,
        "parley_stale_reservations": 0,
        "parley_oldest_open_reservation_age_seconds": 0,
        "parley_reservations_scrape_ok": 1,
    }
    first = authorize(org_a.member, prompt_tokens=1000, max_output_tokens=1000)
    second = authorize(org_a.owner, prompt_tokens=2000, max_output_tokens=500)
    now = _reservations(scrape())
    assert now["parley_open_reservations"] == 2
    assert Decimal(str(now["parley_open_reservations_amount_usd"])) == first.reserved_cost + second.reserved_cost
    assert now["parley_stale_reservations"] == 0
    assert now["parley_oldest_open_reservation_age_seconds"] < 30

    _age(first.reservation_id, 45)
    now = _reservations(scrape())
    assert now["parley_stale_reservations"] == 1
    assert now["parley_oldest_open_reservation_age_seconds"] >= 45

    settle(first, org_a.member)
    now = _reservations(scrape())
    assert now["parley_open_reservations"] == 1
    assert now["parley_stale_reservations"] == 0
    assert Decimal(str(now["parley_open_reservations_amount_usd"])) == second.reserved_cost


@pytest.mark.django_db
def test_a_live_reservation_does_not_count_as_stale_however_old(no_token, org_a):
    from tests.billing.conftest import authorize, ensure_test_model

    ensure_test_model()
    auth = authorize(org_a.member)
    fields = {"created_at": timezone.now() - timedelta(minutes=5)}
    if hasattr(Reservation, "heartbeat_at"):  # its stream still beats (before heartbeats: it has time left)
        fields["heartbeat_at"] = timezone.now()
    Reservation.objects.filter(id=auth.reservation_id).update(**fields)
    now = _reservations(scrape())
    assert now["parley_open_reservations"] == 1
    assert now["parley_stale_reservations"] == 0
    assert now["parley_oldest_open_reservation_age_seconds"] >= 300


@pytest.mark.django_db
def test_an_unreadable_database_fails_the_reservation_figures_not_the_scrape(no_token, monkeypatch):
    from django.db import OperationalError

    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr(metrics, "_open_reservations", down)
    response = scrape()
    found = _reservations(response)
    assert found == {"parley_reservations_scrape_ok": 0}  # no misleading zeros
    assert b"parley_turns_total" in response.content
