"""A minimal, fast OpenAI-compatible upstream for bench/openai_overhead.py (raw ASGI, run by Uvicorn).

`POST /v1/chat/completions` answers a fixed text in CHUNKS chunks, CHUNK_DELAY seconds apart, streamed
(`chat.completion.chunk`, usage at the end when asked, `data: [DONE]`) or as one completion object.
Deliberately tiny so that the provider's own cost is the same for every client of the benchmark.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

CHUNKS = int(os.environ.get("FAKE_CHUNKS", "20"))
CHUNK_DELAY = float(os.environ.get("FAKE_CHUNK_DELAY", "0.005"))
WORDS = [f"word{i} " for i in range(CHUNKS)]


async def _body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> bytes:
    data = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if scope["method"] == "GET" and path.endswith("/models"):
        body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    request = json.loads(await _body(receive) or b"{}")
    model = request.get("model", "fake")
    cid = f"chatcmpl-fake{time.monotonic_ns()}"
    prompt_tokens = 10
    if not request.get("stream"):
        await asyncio.sleep(CHUNK_DELAY * CHUNKS)
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": CHUNKS, "total_tokens": prompt_tokens + CHUNKS},
        }
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": _chunk(cid, model, {"role": "assistant", "content": ""}), "more_body": True})
    for word in WORDS:
        await asyncio.sleep(CHUNK_DELAY)
        await send({"type": "http.response.body", "body": _chunk(cid, model, {"content": word}), "more_body": True})
    tail = _chunk(cid, model, {}, "stop")
    if (request.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": CHUNKS, "total_tokens": prompt_tokens + CHUNKS}
        data = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": [], "usage": usage}
        tail += b"data: " + json.dumps(data).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
