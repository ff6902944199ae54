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
                 "output_tokens", "status", "last_at", "text", "expected")

    def __init__(self) -> None:
        self.sent_at = 0.0
        self.first_at = 0.0
        self.last_at = 0.0
        self.frames = 0
        self.bytes = 0
        self.deltas = 0
        self.gaps: list[float] = []
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
            "gaps": self.gaps if keep_gaps else [],
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
    sockets = []
    for i in range(args.streams):
        sockets.append(await _connect(args.url, args.secret[i % len(args.secret)]).__aenter__())
        if i % 50 == 49:
            await asyncio.sleep(0)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    events = [asyncio.Event() for _ in sockets]

    async def run(i: int, ws) -> Answer:
        await asyncio.sleep(args.ramp * i / max(1, len(sockets)))
        try:
            return await one_answer(ws, prompt=args.prompt, conversation=None, started=events[i])
        finally:
            events[i].set()

    tasks = [asyncio.create_task(run(i, ws)) for i, ws in enumerate(sockets)]
    await asyncio.gather(*(e.wait() for e in events))
    print("ALLSTARTED", flush=True)
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    for ws in sockets:
        await ws.close()
    out = []
    for answer in answers:
        if isinstance(answer, BaseException):
            out.append({"status": f"exception:{type(answer).__name__}", "lost": 0, "reordered": 0, "content_ok": False,
                        "gaps": [], "frames": 0, "bytes": 0, "deltas": 0, "output_tokens": 0, "ttft": None})
        else:
            out.append(answer.summary(keep_gaps=True))
    return {"answers": out}


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
            p.add_argument("--ramp", type=float, default=3.0)
    args = parser.parse_args()
    result = asyncio.run(turns(args) if args.mode == "turns" else load(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
