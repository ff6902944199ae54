"""The in-process event hub: delivers a conversation's frames to the sockets that follow it.

Per-token frames are the hot path. A send through the channel layer costs several times a
socket's own send, so frames go straight to the followers in this process; the channel layer is
used only to reach other processes:

- frames that happen once per turn (message.created, generation.started, tool frames,
  generation.finished) are always published to the conversation's group;
- deltas are published only once another process has asked to follow the running answer (a
  `hub.sync` request, answered with a snapshot on the same group, so ordering holds);
- a stop for an answer that runs in another process goes to the group, and the owning process
  cancels it.

Every published frame carries this process's id, so a process ignores its own frames coming back.

The channel layer may drop frames (a slow or reconnecting client): a client that sees a gap in
`seq` resubscribes with `after_seq` (the last seq it has) and gets the deltas after it again, replayed
from the running answer's chunks (here, or by the owning process answering a `hub.sync`); without
`after_seq`, or when it cannot be replayed, it gets a snapshot. When no process answers, the database
is the record (a snapshot of the saved text). Between the catch-up and the live deltas there is no
gap and no duplicate: a follower registered while a catch-up is pending buffers what arrives and
passes on only the deltas after the catch-up's seq. A follower of a conversation whose answer has
ended gets that answer's `generation.finished`, read from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from channels.layers import InMemoryChannelLayer, get_channel_layer

from conversations import frames
from conversations.db import db_async

if TYPE_CHECKING:
    from conversations.generation import Generation

logger = logging.getLogger(__name__)

SYNC_TIMEOUT = 1.5  # seconds to wait for the owning process to answer a snapshot request


def group_name(conversation_id: UUID | str) -> str:
    return f"conv.{conversation_id}"


class Subscriber(Protocol):
    async def deliver(self, frame: dict[str, Any]) -> None:
        """Send one frame (a dict shaped as in PROTOCOL.md) to the client."""
        ...


class QueueSubscriber:
    """A follower that puts frames on an asyncio.Queue (the SSE endpoint, tests)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def deliver(self, frame: dict[str, Any]) -> None:
        self.queue.put_nowait(frame)


class _Follow:
    """One subscriber following one conversation."""

    __slots__ = ("subscriber", "conversation_id", "pending", "buffer", "nonce", "last_seq", "finished")

    def __init__(self, subscriber: Subscriber, conversation_id: UUID) -> None:
        self.subscriber = subscriber
        self.conversation_id = conversation_id
        self.pending: str | None = None  # message id whose snapshot is awaited
        self.buffer: list[dict] = []
        self.nonce: str | None = None
        self.last_seq: dict[str, int] = {}  # per message: the last delta seq delivered
        self.finished: set[str] = set()

    def wants(self, frame: dict) -> bool:
        """Drop duplicates and stale deltas (frames can arrive both from a snapshot and live)."""
        kind = frame["type"]
        if kind == "delta":
            message = frame["message"]
            if frame["seq"] <= self.last_seq.get(message, 0) or message in self.finished:
                return False
            self.last_seq[message] = frame["seq"]
        elif kind == "message.snapshot":
            message = frame["message"]
            if message in self.finished:
                return False
            self.last_seq[message] = frame["seq"]
        elif kind == "generation.finished":
            message = frame["message"]["id"]
            if message in self.finished:
                return False
            self.finished.add(message)
            self.last_seq.pop(message, None)
        return True


class Hub:
    def __init__(self, *, process_id: str | None = None, layer=None, layer_alias: str = "default") -> None:
        self.process_id = process_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._layer_given = layer
        self._layer_alias = layer_alias
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self.follows: dict[UUID, dict[int, _Follow]] = {}
        self.generations: dict[UUID, Generation] = {}  # running here, by conversation
        self.by_message: dict[UUID, Generation] = {}
        self._layer = None
        self._channel: str | None = None
        self._listener: asyncio.Task | None = None
        self._joined: set[UUID] = set()
        self._timers: set[asyncio.Task] = set()
        self._channel_lock = asyncio.Lock()

    def _bind(self) -> None:
        """Hub state belongs to one event loop (tests run one loop per test)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._reset()
            layer = self._layer_given or get_channel_layer(self._layer_alias)
            self._layer = None if layer is None or isinstance(layer, InMemoryChannelLayer) else layer

    @property
    def uses_layer(self) -> bool:
        self._bind()
        return self._layer is not None

    # --- generations running in this process -------------------------------------------------

    def generation_register(self, generation: Generation) -> None:
        self._bind()
        self.generations[generation.conversation_id] = generation
        self.by_message[generation.message_id] = generation

    async def generation_join(self, generation: Generation) -> None:
        """Listen on the conversation's group (stop and snapshot requests from other processes)."""
        if self._layer is not None:
            await self._join(generation.conversation_id)

    async def generation_unregister(self, generation: Generation) -> None:
        if self.generations.get(generation.conversation_id) is generation:
            del self.generations[generation.conversation_id]
        self.by_message.pop(generation.message_id, None)
        if self._layer is not None and not self.follows.get(generation.conversation_id):
            await self._leave(generation.conversation_id)

    def generation_local(self, message_id: UUID) -> Generation | None:
        self._bind()
        return self.by_message.get(message_id)

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, conversation_id: UUID, frame: dict, *, remote: bool = True) -> None:
        """Deliver a frame to this process's followers, and (when `remote`) to other processes."""
        follows = self.follows.get(conversation_id)
        if follows:
            for follow in list(follows.values()):
                await self._push(follow, frame)
        if remote and self._layer is not None:
            try:
                await self._layer.group_send(
                    group_name(conversation_id),
                    {"type": "hub.frame", "origin": self.process_id, "conversation": str(conversation_id), "frame": frame},
                )
            except Exception:
                # Other processes recover through a snapshot; the local stream must go on.
                logger.exception("channel layer publish failed for conversation %s", conversation_id)

    async def _push(self, follow: _Follow, frame: dict) -> None:
        if follow.pending is not None:
            follow.buffer.append(frame)
            return
        if not follow.wants(frame):
            return
        try:
            await follow.subscriber.deliver(frame)
        except Exception:
            # A closed socket: stop following, the generation goes on.
            logger.debug("dropping follower of %s", follow.conversation_id, exc_info=True)
            self._remove(follow)

    # --- following --------------------------------------------------------------------------

    def follow_now(self, subscriber: Subscriber, conversation_id: UUID) -> None:
        """Register a follower without a snapshot, before a turn's generation publishes anything."""
        self._bind()
        follows = self.follows.setdefault(conversation_id, {})
        if id(subscriber) not in follows:
            follows[id(subscriber)] = _Follow(subscriber, conversation_id)
        if self._layer is not None and conversation_id not in self._joined:
            task = asyncio.ensure_future(self._join(conversation_id))
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)

    async def follow(
        self, subscriber: Subscriber, conversation_id: UUID, *, after_seq: int | None = None, final: bool = True
    ) -> None:
        """Follow a conversation: catch up with the answer streaming now (if any), then live frames.

        Catching up is `generation.started`, then the deltas after `after_seq` when they can be
        replayed (0 <= after_seq <= the answer's seq: the answer runs here, or in a process that
        answers a `hub.sync`), else a `message.snapshot`. With no answer streaming, `final` sends
        the `generation.finished` of the conversation's latest answer (read from the database).
        Following again (after a gap in seq) catches up again.
        """
        self._bind()
        follows = self.follows.setdefault(conversation_id, {})
        follow = follows.get(id(subscriber))
        if follow is None:
            follow = follows[id(subscriber)] = _Follow(subscriber, conversation_id)
        generation = self.generations.get(conversation_id)
        if generation is not None:
            await self._catch_up_local(follow, generation, after_seq)
            return
        if self._layer is not None:
            # Join the group first, then read the database, so an answer that starts in between is seen.
            await self._join(conversation_id)
            generation = self.generations.get(conversation_id)
            if generation is not None:
                await self._catch_up_local(follow, generation, after_seq)
                return
        message = await _latest_answer(conversation_id)
        generation = self.generations.get(conversation_id)
        if generation is not None:
            await self._catch_up_local(follow, generation, after_seq)
            return
        if message is None:
            return
        if message.is_terminal:
            if final:
                await self._push(follow, frames.generation_finished(message))
            return
        if self._layer is None:
            return  # streaming in no process that can be reached (its process died): the sweeper ends it
        await self._push(follow, frames.generation_started(message_id=message.id, conversation_id=conversation_id, model=message.model))
        await self._sync_remote([follow], conversation_id, str(message.id), after_seq=after_seq)

    async def _catch_up_local(self, follow: _Follow, generation: Generation, after_seq: int | None) -> None:
        if not generation.announced:
            return  # it has published nothing yet: the follower gets every frame live
        message = str(generation.message_id)
        follow.finished.discard(message)
        # Taken without awaiting: the replay (or snapshot) holds exactly the deltas up to seq.
        replay = _catch_up_frames(generation, after_seq)
        if replay and replay[0]["type"] == "message.snapshot":
            follow.last_seq.pop(message, None)
        else:
            follow.last_seq[message] = after_seq  # the deltas up to it are the client's already
        follow.pending = message
        follow.buffer = []
        try:
            await follow.subscriber.deliver(
                frames.generation_started(message_id=message, conversation_id=follow.conversation_id, model=generation.model)
            )
            for frame in replay:
                if follow.wants(frame):
                    await follow.subscriber.deliver(frame)
        except Exception:
            self._remove(follow)
            return
        await self._drain(follow)

    async def _drain(self, follow: _Follow) -> None:
        while follow.buffer:
            frame = follow.buffer.pop(0)
            if follow.wants(frame):
                try:
                    await follow.subscriber.deliver(frame)
                except Exception:
                    self._remove(follow)
                    return
        follow.pending = None

    async def _sync_remote(
        self, follows: list[_Follow], conversation_id: UUID, message_id: str, *, after_seq: int | None = None
    ) -> None:
        """Ask the process running the answer for the deltas after `after_seq` (or a snapshot); fall
        back to the database (a snapshot) when it does not answer."""
        nonce = uuid.uuid4().hex
        for follow in follows:
            follow.pending = message_id
            follow.nonce = nonce
            follow.buffer = []
            # Deltas up to after_seq are the client's already (a snapshot in the answer resets this).
            if after_seq is None:
                follow.last_seq.pop(message_id, None)
            else:
                follow.last_seq[message_id] = after_seq
        await self._layer.group_send(
            group_name(conversation_id),
            {
                "type": "hub.sync",
                "origin": self.process_id,
                "conversation": str(conversation_id),
                "message": message_id,
                "nonce": nonce,
                "after_seq": after_seq,
            },
        )
        task = asyncio.ensure_future(self._sync_timeout(follows, nonce))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _sync_timeout(self, follows: list[_Follow], nonce: str) -> None:
        await asyncio.sleep(SYNC_TIMEOUT)
        waiting = [f for f in follows if f.nonce == nonce and f.pending is not None]
        if not waiting:
            return
        # Nobody answered: the answer ended meanwhile, or its process died. The database decides.
        message = await _message_state(waiting[0].pending)
        for follow in waiting:
            if follow.nonce != nonce or follow.pending is None:
                continue
            follow.nonce = None
            if message is None:
                follow.pending = None
                follow.buffer = []
                continue
            replay = [frames.message_snapshot(message_id=message.id, seq=message.last_seq, content=message.content)]
            if message.is_terminal:
                replay.append(frames.generation_finished(message))
            follow.buffer = replay + follow.buffer
            await self._drain(follow)

    async def unfollow(self, subscriber: Subscriber, conversation_id: UUID) -> None:
        follows = self.follows.get(conversation_id)
        if follows and follows.pop(id(subscriber), None) is not None and not follows:
            del self.follows[conversation_id]
            if conversation_id not in self.generations:
                await self._leave(conversation_id)

    async def unfollow_all(self, subscriber: Subscriber) -> None:
        for conversation_id in [cid for cid, follows in self.follows.items() if id(subscriber) in follows]:
            await self.unfollow(subscriber, conversation_id)

    def _remove(self, follow: _Follow) -> None:
        follows = self.follows.get(follow.conversation_id)
        if follows is not None:
            follows.pop(id(follow.subscriber), None)
            if not follows:
                del self.follows[follow.conversation_id]

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_id: UUID) -> AsyncIterator[asyncio.Queue]:
        """`async with hub.subscribe(conversation_id) as queue:` — the frames the websocket sends.

        Call it right after `turn_start` returns (before awaiting anything else) to get every frame
        of that turn; later, it starts with a snapshot of the answer streaming now.
        """
        subscriber = QueueSubscriber()
        await self.follow(subscriber, conversation_id)
        try:
            yield subscriber.queue
        finally:
            await self.unfollow(subscriber, conversation_id)

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self, *, conversation_id: UUID, message_id: UUID) -> bool:
        """Stop an answer here, or ask the process that runs it. True when it runs here."""
        self._bind()
        generation = self.by_message.get(message_id)
        if generation is not None:
            generation.cancel()
            return True
        if self._layer is not None:
            await self._layer.group_send(
                group_name(conversation_id),
                {"type": "hub.stop", "origin": self.process_id, "message": str(message_id)},
            )
        return False

    async def aclose(self) -> None:
        """Stop listening on the channel layer (tests, shutdown)."""
        if self._loop is not asyncio.get_running_loop():
            return
        for task in [self._listener, *self._timers]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for conversation_id in list(self._joined):
            await self._leave(conversation_id)
        self._listener = None

    # --- the channel layer ------------------------------------------------------------------

    async def _join(self, conversation_id: UUID) -> None:
        if conversation_id in self._joined:
            return
        self._joined.add(conversation_id)
        async with self._channel_lock:
            if self._channel is None:
                self._channel = await self._layer.new_channel(prefix=f"hub.{self.process_id}.")
            if self._listener is None or self._listener.done():
                self._listener = asyncio.ensure_future(self._listen(self._channel))
        await self._layer.group_add(group_name(conversation_id), self._channel)

    async def _leave(self, conversation_id: UUID) -> None:
        if conversation_id not in self._joined:
            return
        self._joined.discard(conversation_id)
        with contextlib.suppress(Exception):
            await self._layer.group_discard(group_name(conversation_id), self._channel)

    async def _listen(self, channel: str) -> None:
        while True:
            try:
                message = await self._layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub listener failed; retrying")
                await asyncio.sleep(0.5)
                continue
            try:
                await self._on_layer_message(message)
            except Exception:
                logger.exception("hub could not handle %s", message.get("type"))

    async def _on_layer_message(self, message: dict) -> None:
        if message.get("origin") == self.process_id:
            return
        kind = message.get("type")
        if kind == "hub.frame":
            await self._on_remote_frame(message)
        elif kind == "hub.sync":
            generation = self.by_message.get(_as_uuid(message.get("message")))
            if generation is not None:
                # From now on this answer's deltas go to the layer too; the snapshot is taken
                # at the same instant, and the layer keeps the order of our publishes.
                generation.remote = True
                after_seq = message.get("after_seq")
                replay = _catch_up_frames(generation, after_seq if isinstance(after_seq, int) else None)
                # A snapshot goes as `frame` (what every version of the hub reads), deltas as `frames`.
                reply = {"frame": replay[0]} if replay and replay[0]["type"] == "message.snapshot" else {"frames": replay}
                await self._layer.group_send(
                    group_name(generation.conversation_id),
                    {
                        "type": "hub.frame",
                        "origin": self.process_id,
                        "for": message.get("origin"),
                        "nonce": message.get("nonce"),
                        **reply,
                    },
                )
        elif kind == "hub.stop":
            generation = self.by_message.get(_as_uuid(message.get("message")))
            if generation is not None:
                generation.cancel()

    async def _on_remote_frame(self, message: dict) -> None:
        target = message.get("for")
        if target is not None:
            if target != self.process_id:
                return
            # The answer to our hub.sync: the deltas after the follower's after_seq, or a snapshot.
            replay = message["frames"] if "frames" in message else [message["frame"]]
            nonce = message.get("nonce")
            for follows in list(self.follows.values()):
                for follow in list(follows.values()):
                    if follow.nonce == nonce and follow.pending is not None:
                        follow.nonce = None
                        follow.buffer[0:0] = replay
                        await self._drain(follow)
            return
        frame = message["frame"]
        conversation_id = _as_uuid(message.get("conversation"))
        follows = self.follows.get(conversation_id)
        if not follows:
            return
        for follow in list(follows.values()):
            await self._push(follow, frame)
        if frame["type"] == "generation.started":
            # A new answer in another process: ask it to send us its deltas too.
            live = [f for f in follows.values() if f.pending is None]
            if live:
                await self._sync_remote(live, conversation_id, frame["message"]["id"])


def _as_uuid(value) -> UUID | None:
    try:
        return UUID(str(value))
    except (TypeError, ValueError):
        return None


def _catch_up_frames(generation: Generation, after_seq: int | None) -> list[dict]:
    """What a follower missed of a running answer: the deltas after `after_seq` when they can be
    replayed (from the answer's chunks), else a snapshot. Built without awaiting."""
    seq = generation.seq
    if after_seq is not None and 0 <= after_seq <= seq:
        message = str(generation.message_id)
        chunks = generation.chunks
        return [frames.delta(message_id=message, seq=n, text=chunks[n - 1]) for n in range(after_seq + 1, seq + 1)]
    return [generation.snapshot()]


_MESSAGE_STATE_FIELDS = (
    "id", "status", "model", "content", "last_seq", "input_tokens", "output_tokens", "cost", "error_code", "error_message"
)


def _latest_answer_sync(conversation_id: UUID):
    """The conversation's current (not superseded) assistant message, with what its frames need."""
    from conversations.models import Message, Role

    return (
        Message.objects.filter(conversation_id=conversation_id, role=Role.ASSISTANT, superseded=False)
        .only(*_MESSAGE_STATE_FIELDS)
        .order_by("-position")
        .first()
    )


def _message_state_sync(message_id: str):
    from conversations.models import Message

    return Message.objects.filter(id=message_id).only(*_MESSAGE_STATE_FIELDS).first()


# Off the shared database thread (thread_sensitive=False): these reads are independent of each other.
_latest_answer = db_async(_latest_answer_sync)
_message_state = db_async(_message_state_sync)

_default: Hub | None = None


def default() -> Hub:
    """This process's hub."""
    global _default
    if _default is None:
        _default = Hub()
    return _default
