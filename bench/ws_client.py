"""Websocket load client of bench/ws_stream.py (its own process; the `websockets` package).

    ws_client.py turns --url U --secret S --prompt P [--conversation ID ...] [--count N]
        one answer after the other (into the given conversations, or new ones) → RESULT {json}
    ws_client.py load --url U --secret S --prompt P --streams N --ramp SECONDS
        opens N sockets, prints READY and waits for GO on stdin, starts one answer on each
        (spread over the ramp), prints ALLSTARTED when every answer has its first delta,
        then RESULT {json} when all are finished.

Every answer is checked: deltas numbered 1, 2, 3 … with no gap or reordering, and their join
equal to the content of generation.finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from websockets.asyncio.client import connect


class Answer:
    __slots__ = ("sent_at", "first_at", "frames", "bytes", "deltas", "gaps", "lost", "reordered", "content_ok",
                 "output_tokens", "status", "last_at", "text", "expected", "gap_times")

    def __init__(self) -> None:
        self.sent_at = 0.0
        self.first_at = 0.0
        self.last_at = 0.0
        self.frames = 0
        self.bytes = 0
        self.deltas = 0
        self.gaps: list[float] = []
        self.gap_times: list[float] = []  # when each gap ended (to tell the ramp from the steady state)
        self.lost = 0
        self.reordered = 0
        self.content_ok = False
        self.output_tokens = 0
        self.status = ""
        self.text: list[str] = []
        self.expected = 1

    def summary(self, *, keep_gaps: bool) -> dict:
        return {
            "ttft": self.first_at - self.sent_at if self.first_at else None,
            "frames": self.frames,
            "bytes": self.bytes,
            "deltas": self.deltas,
            "lost": self.lost,
            "reordered": self.reordered,
            "content_ok": self.content_ok,
            "output_tokens": self.output_tokens,
            "status": self.status,
            "duration": self.last_at - self.sent_at,
            "end_at": self.last_at,
            "gaps": self.gaps if keep_gaps else [],
            "gap_times": self.gap_times if keep_gaps else [],
        }


async def one_answer(ws, *, prompt: str, conversation: str | None, started: asyncio.Event | None = None) -> Answer:
    answer = Answer()
    message_id = None
    answer.sent_at = time.perf_counter()
    await ws.send(
        json.dumps({"type": "message.send", "conversation": conversation, "content": prompt, "client_id": str(uuid.uuid4())})
    )
    while True:
        raw = await ws.recv()
        now = time.perf_counter()
        frame = json.loads(raw)
        kind = frame["type"]
        answer.frames += 1
        answer.bytes += len(raw.encode()) if isinstance(raw, str) else len(raw)
        if kind == "generation.started":
            message_id = frame["message"]["id"]
        elif kind == "delta" and frame["message"] == message_id:
            if not answer.first_at:
                answer.first_at = now
                if started is not None:
                    started.set()
            else:
                answer.gaps.append(now - answer.last_at)
                answer.gap_times.append(now)
            seq = frame["seq"]
            if seq > answer.expected:
                answer.lost += seq - answer.expected
            elif seq < answer.expected:
                answer.reordered += 1
            answer.expected = max(answer.expected, seq + 1)
            answer.deltas += 1
            answer.text.append(frame["text"])
            answer.last_at = now
        elif kind == "generation.finished" and frame["message"]["id"] == message_id:
            answer.last_at = now
            answer.status = frame["message"]["status"]
            answer.output_tokens = frame["message"]["usage"]["output_tokens"]
            answer.content_ok = "".join(answer.text) == frame["message"]["content"]
            if started is not None:
                started.set()
            return answer
        elif kind == "error":
            answer.status = "error:" + frame["code"]
            if started is not None:
                started.set()
            return answer


def _connect(url: str, secret: str):
    return connect(
        url,
        additional_headers=[("Authorization", f"Bearer {secret}")],
        compression=None,
        ping_interval=None,
        max_size=2**22,
        open_timeout=60,
    )


async def turns(args) -> dict:
    targets = args.conversation or [None] * args.count
    results = []
    async with _connect(args.url, args.secret[0]) as ws:
        for conversation in targets:
            answer = await one_answer(ws, prompt=args.prompt, conversation=conversation)
            results.append(answer.summary(keep_gaps=False))
    return {"answers": results}


async def load(args) -> dict:
    """N sockets, each asking again as soon as its answer is finished (a closed loop).

    Starts are spread over `ramp` seconds (about one answer's length), so turns arrive at a steady
    rate of N per answer length; the `measure` seconds after the ramp are the steady state.
    """
    sockets = []
    for i in range(args.streams):
        sockets.append(await _connect(args.url, args.secret[i % len(args.secret)]).__aenter__())
        if i % 50 == 49:
            await asyncio.sleep(0)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    go = time.perf_counter()
    window = (go + args.ramp, go + args.ramp + args.measure)

    async def run(i: int, ws) -> list[Answer]:
        await asyncio.sleep(args.ramp * i / max(1, len(sockets)))
        answers = []
        while time.perf_counter() < window[1]:
            answers.append(await one_answer(ws, prompt=args.prompt, conversation=None))
        return answers

    tasks = [asyncio.create_task(run(i, ws)) for i, ws in enumerate(sockets)]
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    print("STEADY", flush=True)
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    print("MEASURED", flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for ws in sockets:
        await ws.close()
    out, failures = [], []
    for result in results:
        if isinstance(result, BaseException):
            failures.append(f"{type(result).__name__}: {result}")
            continue
        for answer in result:
            summary = answer.summary(keep_gaps=True)
            # Only what happened in the steady window counts for the gaps and the token rate.
            pairs = [(g, t) for g, t in zip(answer.gaps, answer.gap_times, strict=True) if window[0] <= t <= window[1]]
            summary["gaps"] = [g for g, _ in pairs]
            summary["window_deltas"] = len(pairs)
            del summary["gap_times"]
            out.append(summary)
    return {"answers": out, "failures": failures, "window": args.measure}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("turns", "load"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--secret", required=True, action="append", help="repeat: sockets use them in turn")
        p.add_argument("--prompt", default="Hello there")
        if name == "turns":
            p.add_argument("--conversation", action="append")
            p.add_argument("--count", type=int, default=20)
        else:
            p.add_argument("--streams", type=int, default=100)
            p.add_argument("--ramp", type=float, default=15.0)
            p.add_argument("--measure", type=float, default=15.0)
    args = parser.parse_args()
    result = asyncio.run(turns(args) if args.mode == "turns" else load(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
