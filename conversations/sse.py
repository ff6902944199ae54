"""Server-Sent Events for the REST API: the websocket's frames as `event: <type>` + `data: <json>`.

The frames come from the in-process hub (the same dicts the websocket sends, see PROTOCOL.md), so
the joined `delta` texts of an answer equal the `content` of its `generation.finished`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any
from uuid import UUID

from django.http import StreamingHttpResponse

from conversations import hub as hub_module

HEARTBEAT_SECONDS = 15.0


def sse_event(event: str, data: Any) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


def sse_frame(frame: dict) -> bytes:
    """One hub frame as one SSE event named by its `type` (the data is the whole frame)."""
    return sse_event(frame["type"], frame)


def sse_response(stream: AsyncIterator[bytes], *, status: int = 200, headers: dict | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, status=status, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _ends(frame: dict, message_id: str) -> bool:
    return frame.get("type") == "generation.finished" and frame.get("message", {}).get("id") == message_id


async def answer_events(
    *,
    subscriber: hub_module.QueueSubscriber,
    conversation_id: UUID,
    message_id: UUID,
    first: Iterable[dict] = (),
    hub: hub_module.Hub | None = None,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[bytes]:
    """The SSE body of one answer: `first` frames, then the hub's frames until it is finished.

    The subscriber already follows the conversation (registered before the generation published
    anything). A client that goes away only stops following: the answer goes on and is billed once.
    """
    hub = hub or hub_module.default()
    mid = str(message_id)
    try:
        for frame in first:
            yield sse_frame(frame)
            if _ends(frame, mid):
                return
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    frame = await subscriber.queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            # Frames of this conversation that belong to another answer are not ours to send.
            message = frame.get("message")
            owner = message.get("id") if isinstance(message, dict) else message
            if frame.get("type") in ("delta", "message.snapshot", "tool.call", "tool.result", "generation.started", "generation.finished") and owner != mid:
                continue
            yield sse_frame(frame)
            if _ends(frame, mid):
                return
    finally:
        with contextlib.suppress(Exception):
            await hub.unfollow(subscriber, conversation_id)
