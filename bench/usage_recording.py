"""What durable usage recording costs per streamed token: CPU µs, with it on and off (numbers, not a test).

The engine writes every running turn's usage and heartbeat on its reservation — one UPDATE a tick
per process for all its streams (PARLEY_USAGE_RECORD_SECONDS, default 1.0), and one at each call's
first text (conversations/engine.py `_UsageRecorder`). 0 turns it off (benchmarks only).

One Daphne process on the fault suite's PostgreSQL and Redis (tests/faults/harness.py, no Celery),
the fake provider streaming TOKENS deltas DELAY s apart, STREAMS concurrent `/v1` clients each asking
again as soon as an answer ends, for SECONDS per round. The setting is switched by restarting the
process with a settings module that sets it; rounds alternate off / on (the machine is shared and its
load drifts), each after a warm-up. Measured per round: the tokens the clients received, and the CPU
time of the Daphne process and of PostgreSQL (postmaster and its backends), per token.

    .venv/bin/python bench/usage_recording.py [--streams 50] [--tokens 100] [--delay 0.02] [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakeprovider import VENDOR_USAGE, reply  # noqa: E402
from tests.faults.clients import words  # noqa: E402
from tests.faults.harness import Cluster  # noqa: E402

MODEL = "gpt-5.2-instant"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def group(pgid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.add(int(stat.parent.name))
    return found


def postgres_pids(cluster: Cluster) -> set[int]:
    postmaster = int((cluster.postgres.data / "postmaster.pid").read_text().split()[0])
    found = {postmaster}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            found.add(int(stat.parent.name))
    return found


async def load(url: str, secret: str, streams: int, seconds: float) -> tuple[int, int]:
    """(tokens received, answers completed) of STREAMS closed-loop clients over SECONDS."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "BENCH stream please"}], "stream": True}
    limits = httpx.Limits(max_connections=streams + 5, max_keepalive_connections=streams + 5)
    tokens = answers = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {secret}"}) as client:
        end = time.monotonic() + seconds

        async def one() -> None:
            nonlocal tokens, answers
            while time.monotonic() < end:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
                    async for line in response.aiter_lines():
                        compact = line.replace(" ", "")
                        if compact.startswith("data:{") and '"content":"' in compact and '"content":""' not in compact:
                            tokens += 1
                        elif line == "data: [DONE]":
                            answers += 1
                            break

        await asyncio.gather(*(one() for _ in range(streams)))
    return tokens, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=100, help="deltas per answer")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between two deltas")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting, alternating")
    args = parser.parse_args()

    cluster = Cluster(daphnes=1, celery=False)
    try:
        cluster.start()
        answer = reply(*words(args.tokens), delta_delay=args.delay, usage=VENDOR_USAGE)
        for vendor in (cluster.fake.openai, cluster.fake.anthropic, cluster.fake.gemini):
            vendor.default = answer
        tenant, = cluster.seed(name="usage-bench", budgets=[None])
        modules = cluster.run / "pysettings"
        modules.mkdir()
        for name, value in (("record_off", "0"), ("record_on", "1.0")):
            (modules / f"{name}.py").write_text(f"from config.settings import *  # noqa\nPARLEY_USAGE_RECORD_SECONDS = {value}\n")
        daphne = cluster.daphnes[0]
        daphne.env = {**daphne.env, "PYTHONPATH": str(modules)}
        print(f"{args.streams} concurrent /v1 streams of {args.tokens} tokens, {args.delay * 1000:.0f} ms apart "
              f"({args.streams / args.delay:.0f} tokens/s offered), {args.seconds:.0f} s per round, "
              f"{args.rounds} rounds per setting\n")
        rows: dict[str, list[tuple[float, float, int, int]]] = {"off": [], "on": []}
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                daphne.stop()
                daphne.env = {**daphne.env, "DJANGO_SETTINGS_MODULE": f"record_{mode}"}
                daphne.start()
                asyncio.run(load(daphne.url, tenant.secret, min(args.streams, 10), 3.0))  # warm-up
                time.sleep(1.0)  # the warm-up's settlements
                server, database = group(daphne.pid), postgres_pids(cluster)
                (since,), = cluster.sql("SELECT now()")
                before = cpu_seconds(server), cpu_seconds(database)
                tokens, answers = asyncio.run(load(daphne.url, tenant.secret, args.streams, args.seconds))
                time.sleep(1.0)  # the last settlements
                after = cpu_seconds(server), cpu_seconds(postgres_pids(cluster) | database)
                rows[mode].append((after[0] - before[0], after[1] - before[1], tokens, answers))
                (turns, recorded), = cluster.sql(
                    "SELECT count(*), count(*) FILTER (WHERE recorded::text <> '{}') FROM billing_reservation "
                    "WHERE created_at >= %s", [since])
                d, p, t, a = rows[mode][-1]
                print(f"  round {round_ + 1} {mode:>3}: {t} tokens, {a} answers ({recorded} of {turns} reservations "
                      f"with a usage record); Daphne {d * 1e6 / t:.1f} µs/token, PostgreSQL {p * 1e6 / t:.1f} µs/token",
                      flush=True)

        def per_token(mode: str, which: int) -> list[float]:
            return [r[which] * 1e6 / r[2] for r in rows[mode]]

        print(f"\n{'recording':<10} {'tokens/s':>9} {'Daphne µs/token':>16} {'PostgreSQL µs/token':>20} {'total µs/token':>15}")
        totals = {}
        for mode in ("off", "on"):
            daphne_us = statistics.median(per_token(mode, 0))
            pg_us = statistics.median(per_token(mode, 1))
            totals[mode] = statistics.median([a + b for a, b in zip(per_token(mode, 0), per_token(mode, 1), strict=True)])
            rate = statistics.median([r[2] / args.seconds for r in rows[mode]])
            print(f"{mode:<10} {rate:>9.0f} {daphne_us:>16.1f} {pg_us:>20.1f} {totals[mode]:>15.1f}")
        print(f"\ndurable usage recording adds {totals['on'] - totals['off']:+.1f} µs of CPU per streamed token "
              f"(medians of {args.rounds} rounds; Daphne + PostgreSQL)")
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
