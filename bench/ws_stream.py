"""Websocket streaming benchmark: Daphne + the demo model + a websocket load client, on loopback.

    .venv/bin/python bench/ws_stream.py [--levels 100,250,500,750] [--quick]

Needs PostgreSQL (BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:55432/parley_bench; the
database is created and migrated when missing) and, unless --no-redis, Redis (BENCH_REDIS_URL, default
redis://127.0.0.1:6394/1) as in production. Runs a few minutes at most and prints:

- time to first token added by Parley (p50/p99): websocket send → first delta, against the demo
  provider called directly in the same run (both at the same token delay);
- frames and bytes per answer with and without coalescing (at 20 tokens/s and with a fast model);
- the most concurrent streams one Daphne process carries at 20 tokens/s each with zero lost or
  reordered deltas and an inter-frame gap p99 under 100 ms;
- server CPU microseconds per relayed token, memory per open stream;
- time to first token with 0, 100 and 1,000 messages of history.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
DAPHNE = str(ROOT / ".venv" / "bin" / "daphne")
HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LOAD_WORDS = 300  # the demo model echoes them one word-sized delta at a time: 15 s per answer
LOAD_SECONDS = LOAD_WORDS / 20  # starts spread over one answer's length: turns arrive steadily
MEASURE_SECONDS = 15.0  # the steady-state window that is measured
LOAD_PROMPT = "/echo " + " ".join(f"word{i}" for i in range(LOAD_WORDS))
TTFT_PROMPT = "/echo Hello there"  # a two-delta answer: time to first token without waiting for long answers


def pct(values: list[float], p: float) -> float:
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.env = dict(os.environ)
        self.env.update(
            DATABASE_URL=args.database_url,
            DEBUG="0",
            LOG_LEVEL="WARNING",
            PARLEY_LLM_CALL_LOG="1",
            DATABASE_POOL_MAX="40",
        )
        self.env.pop("PARLEY_TESTING", None)
        if args.redis_url:
            self.env["REDIS_URL"] = args.redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.daphne: subprocess.Popen | None = None
        self.port = 0

    # --- processes ---------------------------------------------------------------------------

    def django(self, *argv: str, env: dict | None = None) -> dict:
        out = subprocess.run(
            [PY, str(HERE / "ws_setup.py"), *argv], env=env or self.env, check=True, capture_output=True, text=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def ensure_database(self) -> None:
        import psycopg

        name = self.args.database_url.rsplit("/", 1)[1]
        admin = self.args.database_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                conn.execute(f'create database "{name}"')
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True)

    def start_daphne(self, *, delay: float, flush_interval: float | None = None) -> None:
        self.stop_daphne()
        env = dict(self.env, PARLEY_DEMO_TOKEN_DELAY=str(delay))
        if flush_interval is not None:
            env["PARLEY_STREAM_FLUSH_INTERVAL"] = str(flush_interval)
        self.port = free_port()
        log = open(f"/tmp/parley-bench-daphne-{self.port}.log", "w")  # noqa: SIM115
        self.daphne = subprocess.Popen(
            [DAPHNE, "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("Daphne did not start")
        # one warm-up answer: imports, connection pool, tiktoken
        self.turns(prompt="/echo warm", count=2)

    def stop_daphne(self) -> None:
        if self.daphne is not None:
            self.daphne.terminate()
            try:
                self.daphne.wait(10)
            except subprocess.TimeoutExpired:
                self.daphne.kill()
            self.daphne = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def turns(self, *, prompt: str, count: int = 0, conversations: list[str] | None = None) -> list[dict]:
        argv = [PY, str(HERE / "ws_client.py"), "turns", "--url", self.url, "--secret", self.secret, "--prompt", prompt]
        if conversations:
            for conversation in conversations:
                argv += ["--conversation", conversation]
        else:
            argv += ["--count", str(count)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
        line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
        return json.loads(line[7:])["answers"]

    def load(self, *, streams: int, prompt: str) -> dict:
        pid = self.daphne.pid
        rss_start = rss_bytes(pid)
        secrets = [arg for secret in self.secrets for arg in ("--secret", secret)]
        client = subprocess.Popen(
            [PY, str(HERE / "ws_client.py"), "load", "--url", self.url, *secrets, "--prompt", prompt,
             "--streams", str(streams), "--ramp", str(LOAD_SECONDS), "--measure", str(MEASURE_SECONDS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "READY"
        time.sleep(0.5)
        rss_idle = rss_bytes(pid)
        client.stdin.write("GO\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "STEADY"
        cpu_start, started = cpu_seconds(pid), time.monotonic()
        rss_streaming = rss_bytes(pid)
        assert client.stdout.readline().strip() == "MEASURED"
        cpu, elapsed = cpu_seconds(pid) - cpu_start, time.monotonic() - started
        line = client.stdout.readline()
        client.wait(60)
        result = json.loads(line[7:])
        answers = result["answers"]
        gaps = [g for a in answers for g in a["gaps"]]
        # At 20 deltas/s nothing is coalesced: every delta frame is one TextDelta (token) of the model.
        tokens = sum(a["window_deltas"] for a in answers)
        turns_in_window = [a for a in answers if a["ttft"] is not None]
        return {
            "streams": streams,
            "answers": len(answers),
            "failures": result["failures"],
            "complete": sum(1 for a in answers if a["status"] == "complete"),
            "statuses": sorted({a["status"] for a in answers}),
            "lost": sum(a["lost"] for a in answers),
            "reordered": sum(a["reordered"] for a in answers),
            "content_ok": sum(1 for a in answers if a["content_ok"]),
            "gap_p50": pct(gaps, 50),
            "gap_p99": pct(gaps, 99),
            "gap_max": max(gaps) if gaps else float("nan"),
            "ttft_p50": pct([a["ttft"] for a in turns_in_window], 50),
            "ttft_p99": pct([a["ttft"] for a in turns_in_window], 99),
            "tokens": tokens,
            "cpu_seconds": cpu,
            "elapsed": elapsed,
            "cpu_us_per_token": cpu / tokens * 1e6 if tokens else float("nan"),
            "rss_per_idle_socket": (rss_idle - rss_start) / streams,
            "rss_per_stream": (rss_streaming - rss_idle) / streams,
        }

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        t0 = time.monotonic()
        print("preparing the database …", flush=True)
        self.ensure_database()
        prepared = self.django("prepare", "--conversations", str(a.history_runs), "--orgs", str(a.orgs))
        self.secret = prepared["secret"]
        self.secrets = prepared["secrets"]
        print("demo provider called directly …", flush=True)
        direct = self.django("direct", "--runs", str(a.ttft_runs), "--delay", "0.05", "--prompt", TTFT_PROMPT)["ttft"]

        lines: list[str] = []
        try:
            self.start_daphne(delay=0.05)
            print("time to first token through Parley …", flush=True)
            via = self.turns(prompt=TTFT_PROMPT, count=a.ttft_runs)
            assert all(x["status"] == "complete" and x["content_ok"] for x in via), via[:3]
            ttft = [x["ttft"] for x in via]
            lines.append("Time to first token (demo model, 50 ms/token; the demo sleeps one delay before its first token)")
            lines.append(f"  demo provider directly : p50 {ms(pct(direct, 50))}  p99 {ms(pct(direct, 99))}")
            lines.append(f"  through Parley (ws)    : p50 {ms(pct(ttft, 50))}  p99 {ms(pct(ttft, 99))}")
            lines.append(
                f"  added by Parley        : p50 {ms(pct(ttft, 50) - pct(direct, 50))}  "
                f"p99 {ms(pct(ttft, 99) - pct(direct, 99))}"
            )

            print("time to first token with history …", flush=True)
            lines.append(f"Time to first token with history (p50 / p99 of {a.history_runs} turns each)")
            for size in ("0", "100", "1000"):
                got = self.turns(prompt=TTFT_PROMPT, conversations=prepared["histories"][size])
                values = [x["ttft"] for x in got]
                lines.append(f"  {size:>5} messages : p50 {ms(pct(values, 50))}  p99 {ms(pct(values, 99))}")

            coalesced_slow = self.turns(prompt="Hello there", count=a.frame_runs)
            levels_started = time.monotonic()
            print("concurrency levels …", flush=True)
            levels = []
            for streams in a.levels:
                result = self.load(streams=streams, prompt=LOAD_PROMPT)
                ok = (
                    not result["failures"]
                    and result["complete"] == result["answers"]
                    and result["lost"] == 0
                    and result["reordered"] == 0
                    and result["content_ok"] == result["answers"]
                    and result["gap_p99"] < 0.100
                )
                result["ok"] = ok
                levels.append(result)
                print(f"  {streams} streams: {'ok' if ok else 'FAILED'} (gap p99 {ms(result['gap_p99'])})", flush=True)
                if not ok:
                    break
                if time.monotonic() - levels_started > a.budget:
                    print("  (time budget reached)", flush=True)
                    break
            lines.append(
                f"Concurrent streams at 20 tokens/s each, one Daphne process: every socket asks again as soon as its "
                f"{LOAD_WORDS}-word answer ({LOAD_SECONDS:.0f} s) ends, starts spread over {LOAD_SECONDS:.0f} s, "
                f"{a.orgs} organizations; measured over {MEASURE_SECONDS:.0f} s of steady state"
            )
            for r in levels:
                lines.append(
                    f"  {r['streams']:>4} streams: {'PASS' if r['ok'] else 'FAIL'}  answers {r['answers']} "
                    f"(complete {r['complete']}, content = deltas {r['content_ok']})  lost {r['lost']}  "
                    f"reordered {r['reordered']}  inter-frame gap p50 {ms(r['gap_p50'])} p99 {ms(r['gap_p99'])} "
                    f"max {ms(r['gap_max'])}  ttft under load p50 {ms(r['ttft_p50'])} p99 {ms(r['ttft_p99'])}"
                    + (f"  failures {r['failures'][:2]}" if r["failures"] else "")
                )
                lines.append(
                    f"         server CPU {r['cpu_seconds']:.1f} s in {r['elapsed']:.1f} s for {r['tokens']} relayed tokens = "
                    f"{r['cpu_us_per_token']:.0f} µs/token (everything: turn, demo model, relay, saves, settlement); "
                    f"memory {r['rss_per_idle_socket'] / 1024:.0f} KiB per open socket, "
                    f"+{r['rss_per_stream'] / 1024:.0f} KiB per streaming answer"
                )
            passing = [r["streams"] for r in levels if r["ok"]]
            lines.append(f"  most concurrent streams carried: {max(passing) if passing else 'none of the levels'}")

            print("frames and bytes per answer, with and without coalescing …", flush=True)
            self.start_daphne(delay=0.05, flush_interval=0)
            plain_slow = self.turns(prompt="Hello there", count=a.frame_runs)
            self.start_daphne(delay=0, flush_interval=None)
            coalesced_fast = self.turns(prompt="/long", count=a.frame_runs)
            self.start_daphne(delay=0, flush_interval=0)
            plain_fast = self.turns(prompt="/long", count=a.frame_runs)
            lines.append("Frames and bytes per answer (all frames of the turn; deltas in brackets)")
            for label, coalesced, plain in (
                ("20 tokens/s, 'Hello there'", coalesced_slow, plain_slow),
                ("fast model (no delay), /long", coalesced_fast, plain_fast),
            ):
                for name, rows in (("coalesced", coalesced), ("one frame per token", plain)):
                    lines.append(
                        f"  {label:<30} {name:<20}: {statistics.mean(r['frames'] for r in rows):6.1f} frames "
                        f"({statistics.mean(r['deltas'] for r in rows):.1f} deltas), "
                        f"{statistics.mean(r['bytes'] for r in rows):8.0f} bytes, "
                        f"{statistics.mean(r['output_tokens'] for r in rows):.0f} tokens"
                    )
        finally:
            self.stop_daphne()
        print()
        print("\n".join(lines))
        print(f"\n(bench took {time.monotonic() - t0:.0f} s; Redis {'on' if a.redis_url else 'off'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="100,300,500,700")
    parser.add_argument("--quick", action="store_true", help="fewer runs and levels (a smoke run)")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--budget", type=float, default=120, help="seconds of load levels after which none starts")
    parser.add_argument("--orgs", type=int, default=10, help="tenants the load is spread over")
    args = parser.parse_args()
    args.database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:55432/parley_bench")
    args.redis_url = "" if args.no_redis else os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6394/1")
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    args.ttft_runs, args.history_runs, args.frame_runs = (10, 5, 2) if args.quick else (40, 15, 5)
    if args.quick:
        args.levels = args.levels[:1] if args.levels else [50]
    Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
