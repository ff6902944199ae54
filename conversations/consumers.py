"""The chat websocket (`/ws/chat/`, frames in docs/protocol.md). Thin: parse, re-check, call a service.

The socket follows conversations through the in-process hub (conversations/hub.py), which calls
`deliver` for every frame. Nothing long runs inside `receive`: the answer is a task of its own, so a
`generation.stop` can arrive while it streams.

Who the socket acts as is read at the upgrade (accounts/ws.py) and read again, from the per-process
cache of accounts.selectors, before every frame that starts a billed turn and on subscribe and stop:
a revoked key closes the socket with 4401, a member removed or a plan without API access with 4403,
each after an `error` frame; a changed plan applies to the next turn. Every other refusal is an
`error` frame and the socket stays open; a frame that is not valid (not JSON, not an object, too
deep, too large, a field of the wrong type, text that is not valid Unicode) never reaches a service.

A database that is unavailable (a PostgreSQL restart or outage) is an `error` frame
`service_unavailable` with `retry_after`, and the socket stays open; at the upgrade, when who the
socket acts as cannot be read, the `error` frame is followed by close code 4503 (reconnect after
`retry_after`; config.handlers.WebsocketOutageGuard answers it when the database does not).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.errors import InvalidInput, PermissionDenied, Unauthenticated
from accounts.selectors import membership_refresh
from config.errors import ParleyError, database_unavailable, log_database_unavailable
from conversations import frames, turns
from conversations import hub as hub_module
from conversations.db import db_async
from conversations.errors import FrameTooLarge
from conversations.selectors import conversation_get_for_member

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024  # of UTF-8 text (or binary) per client frame
MAX_FRAME_DEPTH = 32  # nesting of arrays and objects in a client frame
UNAUTHENTICATED_CLOSE_CODE = 4401
FORBIDDEN_CLOSE_CODE = 4403
UNAVAILABLE_CLOSE_CODE = 4503  # service_unavailable: reconnect after retry_after (Daphne cannot send 1013)
_ECHO_CLIENT_ID_CHARS = 100  # a longer (so malformed) client_id is not echoed in the error


class _Refused(Exception):
    """Who the socket acts as may no longer use it: tell the client, then close."""

    def __init__(self, error: ParleyError) -> None:
        super().__init__(error.message)
        self.error = error


def _close_code(error: ParleyError) -> int:
    if error.code == "service_unavailable":
        return UNAVAILABLE_CLOSE_CODE
    return FORBIDDEN_CLOSE_CODE if isinstance(error, PermissionDenied) else UNAUTHENTICATED_CLOSE_CODE


def _check_values(frame: dict) -> None:
    """Nesting within MAX_FRAME_DEPTH, and every key and string valid text: no lone surrogate (JSON's
    `"\\ud800"` decodes to one; PostgreSQL and UTF-8 cannot hold it) and no NUL character."""
    stack: list[tuple[Any, int]] = [(frame, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_FRAME_DEPTH:
            raise InvalidInput(f"Frames are nested at most {MAX_FRAME_DEPTH} levels deep.")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
                elif isinstance(item, str):
                    _check_text(item)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
                elif isinstance(item, str):
                    _check_text(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("Text must be valid Unicode (a lone surrogate such as \\ud800 is not).") from None
    if "\x00" in text:
        raise InvalidInput("Text cannot contain NUL characters.")


def _parse(text_data: str | None, bytes_data: bytes | None) -> dict:
    if text_data is None:
        if bytes_data is not None and len(bytes_data) > MAX_FRAME_BYTES:
            raise FrameTooLarge(f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
        raise InvalidInput("Frames are JSON text, not binary.")
    # A character is 1 to 4 bytes: count the bytes only when the characters do not decide.
    if len(text_data) > MAX_FRAME_BYTES or (
        len(text_data) * 4 > MAX_FRAME_BYTES and len(text_data.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES
    ):
        raise FrameTooLarge(f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(text_data)
    except RecursionError:
        raise InvalidInput(f"Frames are nested at most {MAX_FRAME_DEPTH} levels deep.") from None
    except ValueError:  # JSONDecodeError, and numbers too long to convert
        raise InvalidInput("Malformed JSON.") from None
    if not isinstance(frame, dict):
        raise InvalidInput("A frame is a JSON object.")
    _check_values(frame)
    return frame


def _uuid(value: Any, field: str, *, optional: bool = False) -> UUID | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"`{field}` must be a UUID string.")
    try:
        return UUID(value)
    except ValueError:
        raise InvalidInput(f"`{field}` must be a UUID string.") from None


def _content(frame: dict) -> str:
    value = frame.get("content")
    if not isinstance(value, str):
        raise InvalidInput("`content` must be a string.")
    if not value.strip():
        raise InvalidInput("The message is empty.")
    return value


class ChatConsumer(AsyncWebsocketConsumer):
    # Tests give a consumer the hub of a simulated second process: ChatConsumer.as_asgi(hub=...).
    hub: hub_module.Hub | None = None
    # No channel of its own: the hub does the cross-process work, and a socket opened through Redis
    # on every connect would make every upgrade fail while Redis is down.
    channel_layer_alias = None

    def __init__(self, *args, hub: hub_module.Hub | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # Channels' base ignores keyword arguments: keep the hub here
        if hub is not None:
            self.hub = hub

    async def connect(self) -> None:
        self._hub = self.hub or hub_module.default()
        self._closed = False
        self.membership = self.scope.get("membership")
        self.api_key = self.scope.get("api_key")
        # Accepted even when refused: a close code reaches the client only on an accepted socket
        # (closing during the handshake is a bare HTTP 403).
        await self.accept()
        if self.membership is None:
            error = self.scope.get("auth_error") or Unauthenticated("Authentication is required.")
            await self._refuse(error)

    async def disconnect(self, code: int) -> None:
        # The answers go on without this socket; only the following ends.
        await self._hub.unfollow_all(self)

    async def deliver(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closed:
            return
        client_id = None
        try:
            frame = _parse(text_data, bytes_data)
            kind = frame.get("type")
            if kind in ("message.send", "message.regenerate", "message.edit"):
                raw = frame.get("client_id")
                client_id = raw if isinstance(raw, str) and len(raw) <= _ECHO_CLIENT_ID_CHARS else None
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise InvalidInput(f"Unknown frame type: {kind[:40]!r}." if isinstance(kind, str) else "`type` is missing.")
            await handler(self, frame)
        except _Refused as refused:
            await self._refuse(refused.error, client_id)
        except ParleyError as exc:
            await self.deliver(frames.error(exc, client_id))
        except Exception as exc:
            outage = database_unavailable(exc)
            if outage is not None:
                log_database_unavailable(exc, "websocket")
                await self.deliver(frames.error(outage, client_id))
                return
            logger.exception("websocket frame failed")
            await self.deliver(frames.error(ParleyError("Something went wrong.", code="internal_error"), client_id))

    async def _refuse(self, error: ParleyError, client_id: str | None = None) -> None:
        """An `error` frame, then the close code (4401, 4403, or 4503 for `service_unavailable`); the
        socket follows nothing more."""
        self._closed = True
        await self._hub.unfollow_all(self)
        await self.deliver(frames.error(error, client_id))
        await self.close(code=_close_code(error), reason=error.code)

    async def _recheck(self) -> None:
        """Act as who the socket is now: the key, the membership, the organization and its plan."""
        try:
            self.membership, self.api_key = await db_async(membership_refresh)(
                membership=self.membership, api_key=self.api_key
            )
        except (Unauthenticated, PermissionDenied) as error:
            raise _Refused(error) from None

    # --- frames ------------------------------------------------------------------------------

    async def _ping(self, frame: dict) -> None:
        await self.deliver(frames.pong())

    async def _send_message(self, frame: dict) -> None:
        model = frame.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidInput("`model` must be a string.")
        conversation_id = _uuid(frame.get("conversation"), "conversation", optional=True)
        content = _content(frame)
        client_id = _uuid(frame.get("client_id"), "client_id")
        await self._recheck()
        started = await turns.turn_start(
            membership=self.membership,
            api_key=self.api_key,
            conversation_id=conversation_id,
            content=content,
            model=model or None,
            client_id=client_id,
            subscriber=self,
            hub=self._hub,
        )
        await self._answer_existing(started)

    async def _regenerate(self, frame: dict) -> None:
        conversation_id = _uuid(frame.get("conversation"), "conversation")
        client_id = _uuid(frame.get("client_id"), "client_id")
        await self._recheck()
        started = await turns.turn_regenerate(
            membership=self.membership,
            api_key=self.api_key,
            conversation_id=conversation_id,
            client_id=client_id,
            subscriber=self,
            hub=self._hub,
        )
        await self._answer_existing(started)

    async def _edit(self, frame: dict) -> None:
        message_id = _uuid(frame.get("message"), "message")
        content = _content(frame)
        client_id = _uuid(frame.get("client_id"), "client_id")
        await self._recheck()
        started = await turns.turn_edit(
            membership=self.membership,
            api_key=self.api_key,
            message_id=message_id,
            content=content,
            client_id=client_id,
            subscriber=self,
            hub=self._hub,
        )
        await self._answer_existing(started)

    async def _answer_existing(self, started: turns.TurnStarted) -> None:
        """A resend of a known client_id: answer with what exists (the new turn's frames come from the hub)."""
        if started.created:
            return
        if started.user_message is not None:
            await self.deliver(frames.message_created(started.user_message))
        answer = started.assistant_message
        if answer.is_terminal:
            await self.deliver(
                frames.generation_started(message_id=answer.id, conversation_id=answer.conversation_id, model=answer.model)
            )
            await self.deliver(frames.generation_finished(answer))
        # Streaming (or finished): follow, catching up with the answer so far (told already when finished).
        await self._hub.follow(self, answer.conversation_id, final=False)

    async def _stop(self, frame: dict) -> None:
        message_id = _uuid(frame.get("message"), "message")
        await self._recheck()
        await turns.generation_stop(membership=self.membership, message_id=message_id, hub=self._hub)

    async def _subscribe(self, frame: dict) -> None:
        conversation_id = _uuid(frame.get("conversation"), "conversation")
        after_seq = frame.get("after_seq")
        if after_seq is not None and (not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0):
            raise InvalidInput("`after_seq` must be a non-negative integer.")
        await self._recheck()
        await db_async(conversation_get_for_member)(membership=self.membership, conversation_id=conversation_id)
        await self._hub.follow(self, conversation_id, after_seq=after_seq)

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
