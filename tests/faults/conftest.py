"""The fault suite's cluster: started once for the package (about 30 s; stopped when its last test ends,
so the rest of the suite never runs beside it), everything running again
before each test, and the processes' logs attached to a failing test's report."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from .clients import install_responder
from .harness import Cluster, Tenant
from .scenario import warm_up

_cluster: Cluster | None = None
_warmed: dict[str, int] = {}  # Daphne name -> the start it was warmed up after

SCENARIOS = ("redis", "postgres", "daphne", "provider", "prober", "calibration")


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def tenants(cluster: Cluster) -> dict[str, Tenant]:
    """One organization per scenario (so each one's books are its own), and one for the prober;
    every process has served a turn of each vendor before a test starts."""
    seeded = dict(zip(SCENARIOS, cluster.seed(name="faults", budgets=[None] * len(SCENARIOS)), strict=True))
    asyncio.run(warm_up(cluster, seeded["calibration"]))
    _warmed.update({d.name: d.starts for d in cluster.daphnes})
    return seeded


@pytest.fixture(autouse=True)
def _everything_up(request) -> Iterator[None]:
    """Every process up, and a Daphne process started again (after a kill) warmed up again."""
    if "cluster" in request.fixturenames:
        cluster = request.getfixturevalue("cluster")
        cluster.ensure_up()
        if "tenants" in request.fixturenames:
            tenants = request.getfixturevalue("tenants")
            if any(_warmed.get(d.name) != d.starts for d in cluster.daphnes):
                asyncio.run(warm_up(cluster, tenants["calibration"]))
        for daphne in cluster.daphnes:
            _warmed[daphne.name] = daphne.starts
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _cluster is not None and report.when == "call":
        report.sections.append(("cluster logs (last lines)", _cluster.logs_tail(25)))
        if _cluster.restarted:
            report.sections.append(("restarted by the supervisor", repr(_cluster.restarted)))
