"""Parley in its production shape while Redis, PostgreSQL, a Daphne process and the provider fail
under websocket and `/v1` answers that are streaming (tests/faults/README.md).

After each fault: every answer ends in one terminal state; every answer a client saw text of is
billed once for what was generated (the fake provider's books, within the margins of books.py); no
reservation stays open past a minute; no request got an HTML page, a 500, or a 503 without a retry
hint; new requests succeed within 30 s. Each test reports everything that did not hold, not only
the first.
"""

from __future__ import annotations

import time

import pytest

from .books import audit, http_problems, settled
from .scenario import RECOVERY_SECONDS, FaultRun, first_success, run_fault

pytestmark = pytest.mark.faults


def recovery_problems(run: FaultRun) -> list[str]:
    late = {key: seconds for key, seconds in run.recovered.items() if seconds is None or seconds > RECOVERY_SECONDS}
    if not late:
        return []
    return [f"no successful turn within {RECOVERY_SECONDS:.0f} s of the fault's end: {late}; last attempts: "
            + "; ".join(t.describe() for t in run.recovery_turns[-4:])]


def books_problems(cluster, tenant, run: FaultRun) -> list[str]:
    try:
        settled(cluster, tenant)
    except AssertionError as exc:
        problems = [str(exc)]
    else:
        problems = []
    return problems + audit(cluster, tenant, cluster.fake, run.all_turns)


def bad_answers(run: FaultRun) -> list[str]:
    problems = http_problems(run.samples)
    problems += [f"{t.describe()}: {t.http_status} {t.content_type}" for t in run.all_turns
                 if t.http_status is not None and t.http_status >= 500
                 and (t.http_status != 503 or "json" not in (t.content_type or ""))]
    return problems


def not_whole(turns) -> list[str]:
    """The answers that did not end complete with every delta, as the protocol promises."""
    bad = []
    for turn in turns:
        if not turn.completed:
            bad.append(f"did not complete: {turn.describe()}")
        elif turn.entry == "ws" and (turn.final_content != turn.text or not turn.seq_ok):
            bad.append(f"the deltas do not join to the final content: {turn.describe()}")
    return bad


def timing(run: FaultRun) -> list[str]:
    return [f"the scenario's timing failed: this answer had ended before the fault: {t.describe()}"
            for t in run.ended_early]


def report(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems)


async def test_redis_restart(cluster, tenants):
    """Redis goes away for 2 s and comes back empty: the answers go on and complete on every process,
    a watcher on the other process sees no gap and ends with the whole text (a snapshot when the
    channel layer is back), API keys keep working (checked against the database), nothing is refused
    while Redis is away, and the Celery worker survives."""
    tenant = tenants["redis"]
    restarts = dict(cluster.restarted)
    run = await run_fault(cluster, tenant, tenants["prober"], fault=lambda: cluster.redis.restart(down=2.0), watcher=True)
    problems = timing(run) + not_whole(run.turns)
    if run.watch is None or not run.watch.consistent:
        problems.append(f"the watcher on the other process: {run.watch}")
    problems += sorted({f"refused while Redis was away: {s.what}@{s.process}: {s.status} {s.error}{s.body[:100]!r}"
                        for s in run.samples if s.at <= run.fault_ended and not s.ok})
    problems += bad_answers(run) + recovery_problems(run) + books_problems(cluster, tenant, run)
    if cluster.restarted.get("worker", 0) > restarts.get("worker", 0):
        problems.append("the Celery worker exited on the Redis restart (the supervisor restarted it)")
    report(problems)


async def test_postgres_restart(cluster, tenants):
    """PostgreSQL stops (fast shutdown: every session ends) for 3 s while the answers stream and
    settle: the answers complete and are billed once, exactly (settlement is retried until the
    database is back), refusals during the outage are JSON 503s with Retry-After, and requests
    succeed again within 30 s."""
    tenant = tenants["postgres"]
    run = await run_fault(cluster, tenant, tenants["prober"], fault=lambda: cluster.postgres.restart(down=3.0))
    report(timing(run) + not_whole(run.turns) + bad_answers(run) + recovery_problems(run) + books_problems(cluster, tenant, run))


async def test_daphne_sigkill(cluster, tenants):
    """One Daphne process is killed (SIGKILL) in the middle of its answers: the other process's
    answers complete, and it keeps serving; the dead process's answers end `interrupted`, billed from
    the usage recorded while they streamed, and its reservations are released within a minute — by
    the sweeps, while it stays down. Restarted, it serves again."""
    tenant = tenants["daphne"]
    victim = cluster.daphnes[0]
    run = await run_fault(cluster, tenant, tenants["prober"], fault=victim.kill, down=[0])
    killed = [t for t in run.turns if t.process == 0]
    problems = timing(run) + [f"expected cut off with text: {t.describe()}" for t in killed
                              if not t.saw_text or t.completed]
    problems += not_whole(t for t in run.turns if t.process == 1)
    problems += bad_answers(run) + recovery_problems(run)
    problems += books_problems(cluster, tenant, run)  # with process 0 still down: the sweeps did it
    statuses = dict(cluster.sql("SELECT id::text, status FROM conversations_message WHERE id::text = ANY(%s)",
                                [[t.turn_id for t in killed if t.entry == "ws"]]))
    problems += [f"the killed process's answer {mid} ended {status}, not interrupted"
                 for mid, status in statuses.items() if status != "interrupted"]
    # Restarted, it serves new turns.
    victim.start()
    attempts: list = []
    recovered = await first_success(cluster, tenant, processes=[0], since=time.monotonic(), attempts=attempts)
    if any(v is None for v in recovered.values()):
        problems.append(f"the restarted process serves no turn in {RECOVERY_SECONDS:.0f} s: "
                        + "; ".join(t.describe() for t in attempts[-4:]))
    report(problems)


async def test_provider_dies_mid_stream(cluster, tenants):
    """The provider dies mid-stream (every connection cut) and is back 2 s later: the answers end
    `failed` with the text generated so far, each billed for what the provider generated (its usage
    never came: estimated from the text), and new requests succeed within 30 s."""
    tenant = tenants["provider"]
    fake = cluster.fake

    def restore() -> None:
        time.sleep(2.0)
        fake.start()

    run = await run_fault(cluster, tenant, tenants["prober"], fault=fake.kill, restore=restore)
    problems = timing(run) + [f"expected failed with its partial text: {t.describe()}" for t in run.turns
                              if not t.saw_text or t.status != "failed"]
    problems += [f"the final content is not what was streamed: {t.describe()}" for t in run.turns
                 if t.entry == "ws" and t.status == "failed" and t.final_content != t.text]
    report(problems + bad_answers(run) + recovery_problems(run) + books_problems(cluster, tenant, run))
