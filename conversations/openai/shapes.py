"""OpenAI's answer shapes: the `chat.completion` object, `chat.completion.chunk` SSE events, usage, errors.

Pure functions of Parley's values (llm events, the engine's Outcome, ParleyError): no I/O.
"""

from __future__ import annotations

import json
import time
from typing import Any

from config.errors import ParleyError, openai_error_parts
from llm.types import ToolCall, Usage

DONE = b"data: [DONE]\n\n"

# finish reasons OpenAI's clients know; Parley's others ("cancelled", "error") never reach a normal end
_FINISH = {"stop", "length", "tool_calls", "content_filter"}


def created_now() -> int:
    return int(time.time())


def sse_data(data: Any) -> bytes:
    """One SSE event of OpenAI's stream (`data: <json>`, no event name)."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def finish_reason(reason: str | None, *, tool_calls: bool) -> str:
    """OpenAI's finish_reason for how the answer ended: `tool_calls` when calls are handed over,
    `length` and `content_filter` as the provider said, else `stop`."""
    if tool_calls or reason == "tool_calls":
        return "tool_calls"
    return reason if reason in _FINISH else "stop"


def usage_body(usages: list[Usage]) -> dict:
    """OpenAI's usage object. `prompt_tokens` counts cached input too (Parley's Usage keeps it apart)."""
    cached = sum(u.cached_input_tokens for u in usages)
    prompt = sum(u.input_tokens for u in usages) + cached
    completion = sum(u.output_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def usage_from_counts(*, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> dict:
    return usage_body([Usage(input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached_input_tokens)])


def tool_call_body(call: ToolCall, index: int | None = None) -> dict:
    arguments = call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments)
    body: dict[str, Any] = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}
    if index is not None:
        body = {"index": index, **body}
    return body


def completion_body(
    *, completion_id: str, created: int, model: str, text: str, tool_calls: list[ToolCall], finish: str, usage: dict
) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [tool_call_body(call) for call in tool_calls]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "system_fingerprint": None,
    }


class ChunkWriter:
    """The `chat.completion.chunk` events of one streamed answer (same id, created and model in each)."""

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.id, self.created, self.model, self.include_usage = completion_id, created, model, include_usage
        self.tool_index = 0

    def _chunk(self, delta: dict, finish: str | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None  # OpenAI's shape: null in every chunk but the last
        return sse_data(chunk)

    def head(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def text(self, text: str) -> bytes:
        return self._chunk({"content": text}, None)

    def tool_call(self, call: ToolCall) -> bytes:
        delta = {"tool_calls": [tool_call_body(call, self.tool_index)]}
        self.tool_index += 1
        return self._chunk(delta, None)

    def end(self, finish: str, usage: dict) -> bytes:
        """The last chunk (finish_reason), the usage chunk when asked for, and `[DONE]`."""
        out = [self._chunk({}, finish)]
        if self.include_usage:
            out.append(
                sse_data(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        out.append(DONE)
        return b"".join(out)


def error_event(err: ParleyError) -> bytes:
    """An answer that failed after it began: OpenAI's error object as the stream's last event. The
    openai SDK raises it (`openai.APIError`); no finish_reason, usage or `[DONE]` follows."""
    _, body, _ = openai_error_parts(err)
    return sse_data(body)


__all__ = [
    "DONE",
    "ChunkWriter",
    "completion_body",
    "created_now",
    "error_event",
    "finish_reason",
    "sse_data",
    "tool_call_body",
    "usage_body",
    "usage_from_counts",
]
