"""The fault suite's cluster: started once for the suite (about 30 s), everything running again
before each test, and the processes' logs attached to a failing test's report."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from .clients import install_responder
from .harness import Cluster, Tenant
from .scenario import warm_up

_cluster: Cluster | None = None

SCENARIOS = ("redis", "postgres", "daphne", "provider", "prober", "calibration")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    global _cluster
    running = Cluster()
    try:
        running.start()
        install_responder(running.fake)
        _cluster = running
        yield running
    finally:
        _cluster = None
        running.close()


@pytest.fixture(scope="session")
def tenants(cluster: Cluster) -> dict[str, Tenant]:
    """One organization per scenario (so each one's books are its own), and one for the prober;
    every process has served a turn of each vendor before a test starts."""
    seeded = dict(zip(SCENARIOS, cluster.seed(name="faults", budgets=[None] * len(SCENARIOS)), strict=True))
    asyncio.run(warm_up(cluster, seeded["calibration"]))
    return seeded


@pytest.fixture(autouse=True)
def _everything_up(request) -> Iterator[None]:
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").ensure_up()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _cluster is not None and report.when == "call":
        report.sections.append(("cluster logs (last lines)", _cluster.logs_tail(25)))
        if _cluster.restarted:
            report.sections.append(("restarted by the supervisor", repr(_cluster.restarted)))
