"""How long Parley takes to recover from each fault of the fault suite (numbers, not a test).

Starts the fault suite's cluster (tests/faults/harness.py: its own PostgreSQL and Redis, the fake
provider, a Celery worker and beat, two Daphne processes), and for each fault, ROUNDS times: starts
websocket and `/v1` answers of about 5 s on both processes, applies the fault about a second in,
then measures, from the fault's end (for a killed process: from the kill):

- first request: the first successful prober request (`/v1/models`, REST, a `demo` completion), per process;
- first turn: the first complete websocket turn and `/v1` turn through the provider, per process;
- first settled turn: the first of those turns with its ledger row written and its reservation
  closed (the database's timestamps);
- fault's answers settled: from the fault's start, the last of the answers it hit billed and
  released (for a killed process: the sweep that recovers its turns);
- and how many prober requests failed while the fault was on.

    .venv/bin/python bench/faults_recovery.py [--rounds 3] [--faults redis,postgres,daphne,provider]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.books import settled  # noqa: E402
from tests.faults.clients import install_responder  # noqa: E402
from tests.faults.harness import Cluster  # noqa: E402
from tests.faults.scenario import run_fault, warm_up  # noqa: E402

FAULTS = ("redis", "postgres", "daphne", "provider")


def fault_of(cluster: Cluster, name: str):
    """(fault, restore, processes it kills) of one fault."""
    if name == "redis":
        return (lambda: cluster.redis.restart(down=2.0)), None, []
    if name == "postgres":
        return (lambda: cluster.postgres.restart(down=3.0)), None, []
    if name == "daphne":
        return cluster.daphnes[0].kill, None, [0]

    def restore() -> None:
        time.sleep(2.0)
        cluster.fake.start()

    return cluster.fake.kill, restore, []


async def one(cluster: Cluster, name: str, tenant, prober) -> dict[str, float | None]:
    fault, restore, down = fault_of(cluster, name)
    run = await run_fault(cluster, tenant, prober, fault=fault, restore=restore, down=down)
    end = run.fault_started if name == "daphne" else run.fault_ended
    result: dict[str, float | None] = {}
    for index in range(len(cluster.daphnes)):
        if index in down:
            continue
        ok = [s.at for s in run.samples if s.process == index and s.ok and s.at >= end]
        result[f"first request @{index}"] = (min(ok) - end) if ok else None
    for key, seconds in run.recovered.items():
        result[f"first {key.replace('@', ' turn @')}"] = None if seconds is None else seconds + run.fault_ended - end
    during = [s for s in run.samples if s.at <= run.fault_ended]
    result["failed probes during"] = float(sum(not s.ok for s in during if s.process not in down))
    try:
        await asyncio.to_thread(settled, cluster, tenant)
    except AssertionError:
        result["first settled turn"] = result["fault's answers settled"] = None
        return result
    # From the database's clock: when a turn's ledger row was written and its reservation closed.
    end_wall = run.fault_started_wall if name == "daphne" else run.fault_ended_wall
    done = cluster.sql(
        "SELECT r.request_id, greatest(r.closed_at, max(l.created_at)) FROM billing_reservation r "
        "JOIN billing_ledgerentry l ON l.turn_request_id = r.request_id WHERE r.request_id = ANY(%s) "
        "GROUP BY r.request_id, r.closed_at", [[t.turn_id for t in run.all_turns if t.turn_id]])
    at = {request_id: moment.timestamp() - end_wall for request_id, moment in done}
    recovered = [at[t.turn_id] for t in run.recovery_turns if t.completed and t.turn_id in at]
    result["first settled turn"] = min(recovered) if recovered else None
    hit = [at.get(t.turn_id) for t in run.turns]
    started = end_wall - run.fault_started_wall
    result["fault's answers settled"] = None if None in hit else max(hit) + started  # from the fault's start
    if name == "daphne":
        cluster.daphnes[0].start()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faults", default=",".join(FAULTS))
    args = parser.parse_args()
    names = [n for n in args.faults.split(",") if n]
    cluster = Cluster()
    try:
        started = time.monotonic()
        cluster.start()
        install_responder(cluster.fake)
        tenants = cluster.seed(name="bench", budgets=[None] * (len(names) * args.rounds + 2))
        prober, warm, per_round = tenants[0], tenants[1], tenants[2:]
        asyncio.run(warm_up(cluster, warm))
        print(f"cluster up in {time.monotonic() - started:.0f} s (PostgreSQL, Redis, worker, beat, 2 Daphne); "
              f"{args.rounds} round(s) per fault; seconds after the fault's end (daphne: after the kill)\n")
        results: dict[str, list[dict]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for n, name in enumerate(names):
                cluster.ensure_up()
                tenant = per_round[round_ * len(names) + n]
                results[name].append(asyncio.run(one(cluster, name, tenant, prober)))
                print(f"  round {round_ + 1} {name}: " + ", ".join(
                    f"{k}={'-' if v is None else f'{v:.2f}'}" for k, v in results[name][-1].items()), flush=True)
        print()
        keys = sorted({k for rows in results.values() for row in rows for k in row},
                      key=lambda k: (not k.startswith("first request"), not k.startswith("first ws"),
                                     not k.startswith("first v1"), k))
        print(f"{'fault':<10} " + " ".join(f"{k:>22}" for k in keys))
        for name, rows in results.items():
            cells = []
            for key in keys:
                values = [row.get(key) for row in rows if key in row]
                if not values:
                    cells.append(f"{'':>22}")
                elif any(v is None for v in values):
                    cells.append(f"{'never (' + str(sum(v is None for v in values)) + ')':>22}")
                else:
                    cells.append(f"{statistics.median(values):>13.2f} (max {max(values):.2f})"[-22:].rjust(22))
            print(f"{name:<10} " + " ".join(cells))
        print("\nmedian over the rounds (max); 'never': not within the limit (30 s for turns, 75 s for settling); seconds")
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
