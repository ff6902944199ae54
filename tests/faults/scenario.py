"""One fault, end to end: answers streaming on both processes through both entry points, the fault
while they stream, then how long until new turns work again.

`run_fault(...)` returns a `FaultRun` for the checks of tests/faults/books.py (tests) or the figures
of bench/faults_recovery.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .clients import Prober, Sample, Turn, Watch, v1_turn, watch, ws_turn
from .harness import MODELS, Cluster, Tenant

RECOVERY_SECONDS = 30.0  # new requests must succeed within this after a fault ends
VENDORS = list(MODELS)


@dataclass
class FaultRun:
    turns: list[Turn]  # the answers streaming when the fault hit
    fault_started: float
    fault_ended: float
    fault_started_wall: float  # time.time() of the same moments (to compare with database timestamps)
    fault_ended_wall: float
    samples: list[Sample]  # the prober's, from the fault's start to the end of the run
    watch: Watch | None = None
    # answers that had ended before the fault began (the scenario's timing failed: a slow machine)
    ended_early: list[Turn] = field(default_factory=list)
    # after the fault ended: seconds to the first complete ws and /v1 turn, per process (None: none in time)
    recovered: dict[str, float | None] = field(default_factory=dict)
    recovery_turns: list[Turn] = field(default_factory=list)  # every attempt, for the books

    @property
    def all_turns(self) -> list[Turn]:
        return self.turns + self.recovery_turns


def streaming_turns(cluster: Cluster, tenant: Tenant, *, processes: list[int] | None = None,
                    track: list[Turn]) -> tuple[list[asyncio.Task], list[asyncio.Event]]:
    """Per process: two websocket and two /v1 answers of SLOW length, the three vendors in turn."""
    tasks, events = [], []
    for index in processes if processes is not None else range(len(cluster.daphnes)):
        daphne = cluster.daphnes[index]
        for n in range(4):
            model = MODELS[VENDORS[(index + n) % len(VENDORS)]]
            started = asyncio.Event()
            if n < 2:
                coroutine = ws_turn(daphne.ws_url, tenant.secret, process=index, model=model, started=started, track=track)
            else:
                coroutine = v1_turn(daphne.url, tenant.secret, process=index, model=model, started=started, track=track)
            tasks.append(asyncio.create_task(coroutine))
            events.append(started)
    return tasks, events


async def first_success(cluster: Cluster, tenant: Tenant, *, processes: list[int], since: float,
                        limit: float = RECOVERY_SECONDS, attempts: list[Turn]) -> dict[str, float | None]:
    """Seconds after `since` until a short websocket turn and a short /v1 turn complete on each process."""
    result: dict[str, float | None] = {}

    async def until_complete(key: str, index: int, entry: str) -> None:
        daphne = cluster.daphnes[index]
        model = MODELS[VENDORS[index % len(VENDORS)]]
        while time.monotonic() - since < limit:
            if entry == "ws":
                turn = await ws_turn(daphne.ws_url, tenant.secret, process=index, model=model, kind="QUICK", deadline=10)
            else:
                turn = await v1_turn(daphne.url, tenant.secret, process=index, model=model, kind="QUICK", deadline=10)
            attempts.append(turn)
            if turn.completed:
                result[key] = turn.ended_at - since
                return
            await asyncio.sleep(0.25)
        result[key] = None

    await asyncio.gather(*(until_complete(f"{entry}@{index}", index, entry) for index in processes for entry in ("ws", "v1")))
    return result


async def warm_up(cluster: Cluster, tenant: Tenant) -> list[Turn]:
    """A short turn per vendor and entry point on every process: the first turn of a process loads
    the SDKs and the tokenizer (seconds), which no fault should be measured against."""

    async def warm(start: Callable[[], Awaitable[Turn]]) -> Turn:
        # While a cold process loads the SDKs and the tokenizer, a socket's upgrade can wait past the
        # outage guard's 4 s and be closed as "database unavailable"; a client reconnects, so does this.
        for _ in range(3):
            turn = await start()
            if turn.completed or not turn.disconnected or turn.deltas:
                return turn
            await asyncio.sleep(1)
        return turn

    turns = []
    for index, daphne in enumerate(cluster.daphnes):
        for model in MODELS.values():
            turns.append(warm(functools.partial(ws_turn, daphne.ws_url, tenant.secret, process=index, model=model,
                                                kind="QUICK", deadline=120)))
            turns.append(warm(functools.partial(v1_turn, daphne.url, tenant.secret, process=index, model=model,
                                                kind="QUICK", deadline=120)))
    done = await asyncio.gather(*turns)
    failed = [t.describe() for t in done if not t.completed]
    if failed:
        raise RuntimeError("warm-up turns failed:\n" + "\n".join(failed) + "\n" + cluster.logs_tail(20))
    return list(done)


async def run_fault(cluster: Cluster, tenant: Tenant, prober_tenant: Tenant, *, fault: Callable[[], None],
                    restore: Callable[[], None] | None = None, down: list[int] = (), watcher: bool = False,
                    processes_after: list[int] | None = None) -> FaultRun:
    """Start the answers, wait for their first deltas, apply `fault` (sync, in a thread), then
    `restore` (if any), let the answers end, and measure recovery on `processes_after` (default: all
    that are up). `down`: processes the fault kills (the prober stops asking them)."""
    turns: list[Turn] = []
    async with Prober([d.url for d in cluster.daphnes], prober_tenant.secret) as prober:
        tasks, events = streaming_turns(cluster, tenant, track=turns)
        watch_task = None
        if watcher:
            # Follow, from process 1, the first websocket answer, which streams on process 0 (its
            # conversation is known by its first delta).
            async with asyncio.timeout(60):
                await events[0].wait()
            first = next(t for t in turns if t.entry == "ws" and t.process == 0 and t.conversation_id)
            watch_task = asyncio.create_task(watch(cluster.daphnes[1].ws_url, tenant.secret, first.conversation_id))
        async with asyncio.timeout(60):
            await asyncio.gather(*(event.wait() for event in events))
        await asyncio.sleep(0.5)  # well inside the answers: about 10 deltas each
        for index in down:
            prober.skip(index)
        fault_started, fault_started_wall = time.monotonic(), time.time()
        ended_early = [t for t in turns if t.ended_at is not None]
        await asyncio.to_thread(fault)
        if restore is not None:
            await asyncio.to_thread(restore)
        fault_ended, fault_ended_wall = time.monotonic(), time.time()
        # New turns from the fault's end on, while the answers it hit are still ending.
        up = processes_after if processes_after is not None else [i for i in range(len(cluster.daphnes)) if i not in down]
        attempts: list[Turn] = []
        recovery = asyncio.create_task(first_success(cluster, tenant, processes=up, since=fault_ended, attempts=attempts))
        finished = await asyncio.gather(*tasks)
        seen = await watch_task if watch_task is not None else None
        recovered = await recovery
        await asyncio.sleep(max(0.0, fault_ended + 2.0 - time.monotonic()))  # the prober, after the fault
        samples = prober.between(fault_started, time.monotonic())
    return FaultRun(turns=list(finished), fault_started=fault_started, fault_ended=fault_ended,
                    fault_started_wall=fault_started_wall, fault_ended_wall=fault_ended_wall, samples=samples,
                    watch=seen, recovered=recovered, recovery_turns=attempts, ended_early=ended_early)
