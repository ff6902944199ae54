"""The chat websocket (`/ws/chat/`, frames in shared/PROTOCOL.md). Thin: parse, authorize, call a service.

The socket follows conversations through the in-process hub (conversations/hub.py), which calls
`deliver` for every frame. Nothing long runs inside `receive`: the answer is a task of its own, so a
`generation.stop` can arrive while it streams.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.errors import InvalidInput, ParleyError
from conversations import hub as hub_module
from conversations import services
from conversations.db import db_async
from conversations.errors import FrameTooLarge
from conversations.selectors import conversation_get_for_member

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
UNAUTHENTICATED_CLOSE_CODE = 4401


def _uuid(value: Any, field: str, *, optional: bool = False) -> UUID | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"`{field}` must be a UUID string.")
    try:
        return UUID(value)
    except ValueError:
        raise InvalidInput(f"`{field}` must be a UUID string.") from None


def _text(frame: dict, field: str) -> str:
    value = frame.get(field)
    if not isinstance(value, str):
        raise InvalidInput(f"`{field}` must be a string.")
    return value


class ChatConsumer(AsyncWebsocketConsumer):
    # Tests give a consumer the hub of a simulated second process: ChatConsumer.as_asgi(hub=...).
    hub: hub_module.Hub | None = None

    async def connect(self) -> None:
        self.membership = self.scope.get("membership")
        self.api_key = self.scope.get("api_key")
        if self.membership is None:
            await self.close(code=UNAUTHENTICATED_CLOSE_CODE)
            return
        self._hub = self.hub or hub_module.default()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        # The answers go on without this socket; only the following ends.
        if getattr(self, "_hub", None) is not None:
            await self._hub.unfollow_all(self)

    async def deliver(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        client_id = None
        try:
            if text_data is None:
                if bytes_data is not None and len(bytes_data) > MAX_FRAME_BYTES:
                    raise FrameTooLarge(f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
                raise InvalidInput("Frames are JSON text.")
            if len(text_data) > MAX_FRAME_BYTES and len(text_data.encode()) > MAX_FRAME_BYTES:
                raise FrameTooLarge(f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
            try:
                frame = json.loads(text_data)
            except ValueError:
                raise InvalidInput("Malformed JSON.") from None
            if not isinstance(frame, dict):
                raise InvalidInput("A frame is a JSON object.")
            kind = frame.get("type")
            if kind in ("message.send", "message.regenerate", "message.edit"):
                raw = frame.get("client_id")
                client_id = raw if isinstance(raw, str) else None
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise InvalidInput(f"Unknown frame type: {kind!r}." if isinstance(kind, str) else "`type` is missing.")
            await handler(self, frame)
        except ParleyError as exc:
            await self._error(exc, client_id)
        except Exception:
            logger.exception("websocket frame failed")
            await self._error(ParleyError("Something went wrong.", code="internal_error"), client_id)

    async def _error(self, exc: ParleyError, client_id: str | None) -> None:
        frame: dict[str, Any] = {
            "type": "error",
            "code": exc.code,
            "message": exc.message,
            "retry_after": exc.retry_after,
        }
        if client_id is not None:
            frame["client_id"] = client_id
        await self.deliver(frame)

    # --- frames ------------------------------------------------------------------------------

    async def _ping(self, frame: dict) -> None:
        await self.deliver({"type": "pong"})

    async def _send_message(self, frame: dict) -> None:
        model = frame.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidInput("`model` must be a string.")
        started = await services.turn_start(
            membership=self.membership,
            api_key=self.api_key,
            conversation_id=_uuid(frame.get("conversation"), "conversation", optional=True),
            content=_text(frame, "content"),
            model=model or None,
            client_id=_uuid(frame.get("client_id"), "client_id"),
            subscriber=self,
            hub=self._hub,
        )
        await self._answer_existing(started)

    async def _regenerate(self, frame: dict) -> None:
        started = await services.turn_regenerate(
            membership=self.membership,
            api_key=self.api_key,
            conversation_id=_uuid(frame.get("conversation"), "conversation"),
            client_id=_uuid(frame.get("client_id"), "client_id"),
            subscriber=self,
            hub=self._hub,
        )
        await self._answer_existing(started)

    async def _edit(self, frame: dict) -> None:
        started = await services.turn_edit(
            membership=self.membership,
            api_key=self.api_key,
            message_id=_uuid(frame.get("message"), "message"),
            content=_text(frame, "content"),
            client_id=_uuid(frame.get("client_id"), "client_id"),
            subscriber=self,
            hub=self._hub,
        )
        await self._answer_existing(started)

    async def _answer_existing(self, started: services.TurnStarted) -> None:
        """A resend of a known client_id: answer with what exists (the new turn's frames come from the hub)."""
        if started.created:
            return
        if started.user_message is not None:
            await self.deliver(services.message_created_frame(started.user_message))
        answer = started.assistant_message
        if answer.is_terminal:
            await self.deliver(
                hub_module.started_frame(message_id=answer.id, conversation_id=answer.conversation_id, model=answer.model)
            )
            await self.deliver(hub_module.finished_frame(answer))
        # Streaming (or finished): follow, with a snapshot of the answer so far.
        await self._hub.follow(self, answer.conversation_id)

    async def _stop(self, frame: dict) -> None:
        await services.generation_stop(
            membership=self.membership, message_id=_uuid(frame.get("message"), "message"), hub=self._hub
        )

    async def _subscribe(self, frame: dict) -> None:
        conversation_id = _uuid(frame.get("conversation"), "conversation")
        after_seq = frame.get("after_seq")
        if after_seq is not None and (not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0):
            raise InvalidInput("`after_seq` must be a non-negative integer.")
        await db_async(conversation_get_for_member)(
            membership=self.membership, conversation_id=conversation_id
        )
        await self._hub.follow(self, conversation_id)

    async def _unsubscribe(self, frame: dict) -> None:
        conversation_id = _uuid(frame.get("conversation"), "conversation")
        await self._hub.unfollow(self, conversation_id)

    _handlers = {
        "ping": _ping,
        "message.send": _send_message,
        "message.regenerate": _regenerate,
        "message.edit": _edit,
        "generation.stop": _stop,
        "conversation.subscribe": _subscribe,
        "conversation.unsubscribe": _unsubscribe,
    }

