"""What Parley's `/v1/chat/completions` adds over calling the same provider directly, next to LiteLLM's proxy.

One run, loopback only, bounded: a tiny fake OpenAI upstream (bench/openai_fake_upstream.py), then for
each target — the upstream directly, Parley (API key auth, tier rules, rate limits, budget reservation,
settlement, call log, on PostgreSQL + Redis), LiteLLM's proxy (bench/.litellm-venv, see
bench/setup_litellm.sh) — CLIENTS concurrent clients each send REQUESTS streaming completions in turn.
The targets take turns in ROUNDS rounds (the machine is shared and its load drifts), after a warm-up.
Prints p50/p99 of time to first token and of the whole answer, each server's CPU time per request
(its whole process group), and what each proxy adds over direct.

    bash bench/setup_litellm.sh          # once
    .venv/bin/python bench/openai_overhead.py [--clients 50] [--requests 10] [--rounds 5] [--no-litellm]

Environment: BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:55432/parley_api, migrated here),
BENCH_REDIS_URL (default redis://127.0.0.1:6396/0; empty for none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
LITELLM = ROOT / "bench" / ".litellm-venv" / "bin" / "litellm"
MODEL = "gpt-5.2-instant"  # Parley's alias on the OpenAI provider; LiteLLM gets the same name
UPSTREAM_KEY = "sk-bench-upstream"

SETUP = """
from decimal import Decimal
from accounts.models import ApiKey, Membership, Organization, Tier, User
from accounts.services import api_key_create, organization_create
tier, _ = Tier.objects.update_or_create(slug="bench-unlimited", defaults=dict(
    name="Bench (unlimited)", monthly_budget_usd=Decimal("1000000"), requests_per_minute=10_000_000,
    tokens_per_minute=1_000_000_000, allowed_models=["demo", "MODEL_ALIAS"], max_message_chars=100_000,
    max_output_tokens=4096, features=["api"]))
for n in range(1, ORGANIZATIONS + 1):
    email = "bench@example.com" if n == 1 else f"bench{n}@example.com"
    user = User.objects.filter(email=email).first() or User.objects.create_user(email=email, password=None)
    membership = Membership.objects.filter(user=user).select_related("organization").first()
    if membership is None:
        organization_create(name=f"Bench {n}", owner=user, tier=tier)
        membership = Membership.objects.select_related("organization").get(user=user)
    Organization.objects.filter(pk=membership.organization_id).update(tier=tier)
    membership = Membership.objects.select_related("organization__tier", "user").get(pk=membership.pk)
    key, secret = api_key_create(membership=membership, name="bench")
    print("SECRET=" + secret)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_database(url: str) -> None:
    """Create the benchmark's PostgreSQL database when it does not exist yet."""
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.logs = Path(tempfile.mkdtemp(prefix="parley-bench-"))

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.logs, ignore_errors=True)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in a process group (a server and its workers)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def one_request(client: httpx.AsyncClient, url: str, key: str) -> tuple[float, float]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 200,
    }
    started = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if first is None and '"content":"word' in line.replace(" ", ""):
                first = time.perf_counter() - started
            if line.strip() == "data: [DONE]":
                break
    total = time.perf_counter() - started
    return (first if first is not None else total), total


async def warm_up(url: str, keys: list[str], clients: int) -> None:
    """Imports, connection pools, caches and prepared statements, before anything is measured."""
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):
            await asyncio.gather(*(one_request(client, url, keys[i % len(keys)]) for i in range(min(clients, 20))))


async def run_round(url: str, keys: list[str], clients: int, requests: int) -> tuple[list[tuple[float, float]], float]:
    """CLIENTS concurrent clients, each sending REQUESTS in turn: (ttft, total) of each, and the elapsed time."""
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    results: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(key: str) -> None:
            for _ in range(requests):
                results.append(await one_request(client, url, key))

        started = time.perf_counter()
        await asyncio.gather(*(worker(keys[i % len(keys)]) for i in range(clients)))
    return results, time.perf_counter() - started


def summary(results: list[tuple[float, float]], elapsed: float, cpu_seconds: float | None) -> dict:
    ttft = sorted(r[0] for r in results)
    total = sorted(r[1] for r in results)
    return {
        "n": len(results),
        "rps": len(results) / elapsed,
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))],
        "total_p50": statistics.median(total),
        "total_p99": total[min(len(total) - 1, int(len(total) * 0.99))],
        **({"cpu_ms": cpu_seconds * 1000 / len(results)} if cpu_seconds is not None else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--rounds", type=int, default=5, help="the targets take turns this many times")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.005)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument(
        "--organizations", type=int, default=1, help="spread Parley's clients over this many organizations (one key each)"
    )
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    args = parser.parse_args()

    database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:55432/parley_api")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6396/0")
    procs = Processes()
    try:
        upstream_port, parley_port, litellm_port = free_port(), free_port(), free_port()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "OPENAI"))}
        upstream_env = {**base_env, "FAKE_CHUNKS": str(args.chunks), "FAKE_CHUNK_DELAY": str(args.chunk_delay)}
        procs.start(
            "upstream",
            [PY, "-m", "uvicorn", "bench.openai_fake_upstream:app", "--port", str(upstream_port), "--log-level", "warning", "--no-access-log"],
            upstream_env,
        )
        upstream = f"http://127.0.0.1:{upstream_port}/v1"
        wait_http(upstream + "/models")

        parley_env = {
            **base_env,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "OPENAI_BASE_URL": upstream,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "DATABASE_POOL_MAX": "40",
        }
        if os.environ.get("BENCH_SETTINGS"):  # an experiment's settings module (PYTHONPATH must reach it)
            parley_env["DJANGO_SETTINGS_MODULE"] = os.environ["BENCH_SETTINGS"]
        ensure_database(database_url)
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=parley_env, check=True)
        setup = SETUP.replace("MODEL_ALIAS", MODEL).replace("ORGANIZATIONS", str(args.organizations))
        out = subprocess.run([PY, "manage.py", "shell", "-c", setup], cwd=ROOT, env=parley_env, check=True, capture_output=True, text=True)
        secrets = [line[7:] for line in out.stdout.splitlines() if line.startswith("SECRET=")]
        if args.server == "daphne":
            server = [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(parley_port), "config.asgi:application"]
        else:
            server = [PY, "-m", "uvicorn", "config.asgi:application", "--port", str(parley_port), "--log-level", "warning", "--no-access-log"]
        servers = {"parley": procs.start("parley", server, parley_env)}
        wait_http(f"http://127.0.0.1:{parley_port}/healthz")

        targets = [("direct", upstream + "/chat/completions", [UPSTREAM_KEY]), ("parley", f"http://127.0.0.1:{parley_port}/v1/chat/completions", secrets)]
        if not args.no_litellm:
            if not LITELLM.exists():
                print("LiteLLM is not installed: run `bash bench/setup_litellm.sh` (or pass --no-litellm)", file=sys.stderr)
                return 2
            config = procs.logs / "litellm.yaml"
            config.write_text(
                json.dumps(
                    {
                        "model_list": [
                            {
                                "model_name": MODEL,
                                "litellm_params": {"model": "openai/gpt-5.2-chat-latest", "api_base": upstream, "api_key": UPSTREAM_KEY},
                            }
                        ],
                        "litellm_settings": {"drop_params": True},
                    }
                )
            )
            master_key = "sk-bench-" + os.urandom(16).hex()  # LiteLLM authenticates requests too (no database)
            litellm_env = {
                **base_env,
                "LITELLM_MASTER_KEY": master_key,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "NO_DOCS": "True",
            }
            servers["litellm"] = procs.start(
                "litellm",
                [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(litellm_port), "--num_workers", "1"],
                litellm_env,
            )
            wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness", timeout=240)
            targets.append(("litellm", f"http://127.0.0.1:{litellm_port}/v1/chat/completions", [master_key]))

        print(f"{args.clients} concurrent clients ({args.organizations} Parley organization(s)) x {args.requests} streaming requests each, in {args.rounds} interleaved rounds; upstream: {args.chunks} chunks, {args.chunk_delay * 1000:.1f} ms apart")
        # The targets take turns, a round each, so that the shared machine's ups and downs fall on all of them.
        for _name, url, keys in targets:
            asyncio.run(warm_up(url, keys, args.clients))
        measured: dict[str, tuple[list, float, float]] = {name: ([], 0.0, 0.0) for name, _, _ in targets}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, url, keys in targets:
                server_proc = servers.get(name)
                cpu_before = group_cpu_seconds(server_proc.pid) if server_proc else 0.0
                round_results, elapsed = asyncio.run(run_round(url, keys, args.clients, per_round))
                cpu = group_cpu_seconds(server_proc.pid) - cpu_before if server_proc else 0.0
                results_so_far, elapsed_so_far, cpu_so_far = measured[name]
                measured[name] = (results_so_far + round_results, elapsed_so_far + elapsed, cpu_so_far + cpu)
        results = {
            name: summary(r, elapsed, cpu if name in servers else None) for name, (r, elapsed, cpu) in measured.items()
        }
        direct = results["direct"]
        print(f"{'target':<8} {'n':>5} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'total p50':>10} {'total p99':>10} {'CPU/req':>8}   added over direct (p50 / p99 of total)")
        for name, r in results.items():
            added = ""
            if name != "direct":
                added = f"+{(r['total_p50'] - direct['total_p50']) * 1000:7.1f} ms / +{(r['total_p99'] - direct['total_p99']) * 1000:7.1f} ms   (TTFT +{(r['ttft_p50'] - direct['ttft_p50']) * 1000:.1f} / +{(r['ttft_p99'] - direct['ttft_p99']) * 1000:.1f} ms)"
            print(
                f"{name:<8} {r['n']:>5} {r['rps']:>7.1f} {r['ttft_p50'] * 1000:>7.1f}ms {r['ttft_p99'] * 1000:>7.1f}ms "
                f"{r['total_p50'] * 1000:>8.1f}ms {r['total_p99'] * 1000:>8.1f}ms "
                f"{(str(round(r['cpu_ms'], 1)) + 'ms') if 'cpu_ms' in r else '':>8}   {added}"
            )
        if "litellm" in results:
            parley_added = results["parley"]["total_p50"] - direct["total_p50"]
            litellm_added = results["litellm"]["total_p50"] - direct["total_p50"]
            ratio = parley_added / litellm_added if litellm_added > 0 else float("inf")
            verdict = "met" if ratio <= 0.5 else "NOT met"
            print(f"Parley adds {ratio:.2f}x what LiteLLM adds at p50 (goal: at most 0.5x): {verdict}")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
