"""Every frame the server sends on the websocket (and, as SSE events, on the REST stream), in one place.

One builder per frame of docs/protocol.md ("Server → client"), with the same fields in the same
shape; nothing else in the project writes a frame dict by hand. The builders take plain values (or
a saved row for the frames that describe one) and import no model, so any module may use them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from config.errors import ParleyError, ws_error_frame

__all__ = [
    "conversation_created",
    "cost_str",
    "delta",
    "error",
    "generation_finished",
    "generation_started",
    "message_created",
    "message_snapshot",
    "pong",
    "tool_call",
    "tool_result",
]

_COST_QUANTUM = Decimal("0.00000001")  # the decimal places of Message.cost


def cost_str(value: Decimal | int | None) -> str:
    """A cost as the protocol's decimal string: fixed-point at Message.cost's places, never an
    exponent (`str(Decimal("0E-8"))` would print "0E-8"). None (not settled) counts as zero."""
    return f"{Decimal(value or 0).quantize(_COST_QUANTUM):f}"


def conversation_created(conversation) -> dict:
    """`conversation.created` for a saved Conversation."""
    return {
        "type": "conversation.created",
        "conversation": {"id": str(conversation.id), "title": conversation.title, "model": conversation.model},
    }


def message_created(message) -> dict:
    """`message.created` for a saved user Message."""
    return {
        "type": "message.created",
        "message": {
            "id": str(message.id),
            "conversation": str(message.conversation_id),
            "role": "user",
            "content": message.content,
            "client_id": str(message.client_id) if message.client_id else None,
            "created_at": message.created_at.isoformat(),
        },
    }


def generation_started(*, message_id, conversation_id, model: str) -> dict:
    return {
        "type": "generation.started",
        "message": {
            "id": str(message_id),
            "conversation": str(conversation_id),
            "role": "assistant",
            "model": model,
            "status": "streaming",
        },
    }


def delta(*, message_id, seq: int, text: str) -> dict:
    """One piece of an answer's text; `seq` is 1, 2, 3 … per message, without gaps."""
    return {"type": "delta", "message": str(message_id), "seq": seq, "text": text}


def message_snapshot(*, message_id, seq: int, content: str) -> dict:
    """All text of a streaming answer up to and including delta `seq`."""
    return {"type": "message.snapshot", "message": str(message_id), "seq": seq, "content": content}


def tool_call(*, message_id, call_id: str, name: str, arguments: Any) -> dict:
    return {"type": "tool.call", "message": str(message_id), "call": {"id": call_id, "name": name, "arguments": arguments}}


def tool_result(*, message_id, call_id: str, result: Any) -> dict:
    return {"type": "tool.result", "message": str(message_id), "call_id": call_id, "result": result}


def generation_finished(message) -> dict:
    """`generation.finished` for a saved assistant Message in a terminal state."""
    error = {"code": message.error_code, "message": message.error_message} if message.error_code else None
    return {
        "type": "generation.finished",
        "message": {
            "id": str(message.id),
            "status": message.status,
            "model": message.model,  # the model that answered: a fallback's, when one did
            "content": message.content,
            "usage": {
                "input_tokens": message.input_tokens,
                "output_tokens": message.output_tokens,
                "cost": cost_str(message.cost),
            },
            "error": error,
        },
    }


def error(err: ParleyError, client_id: str | None = None) -> dict:
    """`error`: code, message, retry_after (whole seconds or null), client_id when it answers a turn
    frame. The code comes from the one error table (config.errors)."""
    return ws_error_frame(err, client_id)


def pong() -> dict:
    return {"type": "pong"}
