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

The channel layer may also fail (Redis down, restarting, hung): nothing of that reaches the turn.
Sends and joins are bounded by LAYER_TIMEOUT and, after a failure, not tried again for a while
(LAYER_RETRY_MIN doubling up to LAYER_RETRY_MAX), so the answer streams on to the followers in this
process. What other processes missed is repaired when the layer answers again:

- the owning process remembers a conversation whose frames did not go out (no cost per delta until
  one fails); its next successful send (or the repair loop, within a second) is a recovery:
  `generation.started` and a `message.snapshot` of the running answer (this process's followers get
  the snapshot too), after the once-per-turn frames that were lost; from then on the answer's deltas
  go to the layer. An answer that ended meanwhile gets its `generation.finished` sent again;
- a follower in another process that sees a gap in a remote answer's `seq` asks its owner for a
  snapshot (`hub.sync`) and passes on nothing of the gap;
- a join (group_add), a `hub.sync` or a `hub.stop` that failed is retried by the repair loop; until
  the owner can be asked, a follower gets snapshots of the saved text (the database is the record),
  then the owner's snapshot and live deltas once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
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
LAYER_TIMEOUT = 0.5  # seconds a send or join may wait for the channel layer (a hung Redis)
LAYER_RETRY_MIN = 0.5  # after a failure, the layer is not tried for this long, doubling …
LAYER_RETRY_MAX = 4.0  # … up to this while it keeps failing
REPAIR_INTERVAL = 1.0  # seconds between the repair loop's rounds (joins, syncs, lost frames)
MISSED_MAX_AGE = 300.0  # seconds: lost frames of an ended answer are given up after this
STOP_MAX_AGE = 60.0  # seconds: a stop that could not be sent is given up after this
LOG_EVERY = 10.0  # seconds: at most one warning about the layer per this
_TOOL_FRAMES = frozenset({"tool.call", "tool.result"})
_OPENING_FRAMES = frozenset({"conversation.created", "message.created"})


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
        # The channel layer's failures and what they left to repair (see the module docstring).
        self._layer_down_until = 0.0  # monotonic; 0 while the layer answers
        self._layer_backoff = 0.0
        self._layer_logged_at = -1e9
        self._missed: dict[UUID, tuple[float, list[dict]]] = {}  # by conversation: since when, frames not sent
        self._missed_lock = asyncio.Lock()
        self._unjoined: set[UUID] = set()  # joins that failed
        self._resync: set[UUID] = set()  # conversations whose followers here may have missed a remote answer's frames
        self._stops: dict[UUID, tuple[float, UUID, dict]] = {}  # stops for other processes not sent yet
        self._repair_task: asyncio.Task | None = None

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
        """Deliver a frame to this process's followers, and (when `remote`) to other processes.

        Never raises for the channel layer: what other processes miss is repaired (see the module
        docstring). The check below costs nothing per delta until a send has failed.
        """
        if self._missed and conversation_id in self._missed:
            await self._publish_missed(conversation_id, frame, remote=remote)
            return
        follows = self.follows.get(conversation_id)
        if follows:
            for follow in list(follows.values()):
                await self._push(follow, frame)
        if remote and self._layer is not None:
            sent = await self._send(
                conversation_id,
                {"type": "hub.frame", "origin": self.process_id, "conversation": str(conversation_id), "frame": frame},
            )
            if not sent:
                self._miss(conversation_id, frame)

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

    # --- what other processes missed --------------------------------------------------------

    def _miss(self, conversation_id: UUID, frame: dict | None) -> None:
        """A frame of this conversation did not reach the other processes: repair it later."""
        since, frames_lost = self._missed.setdefault(conversation_id, (time.monotonic(), []))
        if frame is not None and frame["type"] not in ("delta", "message.snapshot", "generation.started"):
            frames_lost.append(frame)  # once-per-turn frames are sent again; deltas become a snapshot
        self._repair_soon()

    async def _publish_missed(self, conversation_id: UUID, frame: dict | None, *, remote: bool = True) -> None:
        """Publish `frame` (None: nothing new, the repair loop) after what other processes missed."""
        follows = self.follows.get(conversation_id)
        if frame is not None and follows:
            for follow in list(follows.values()):
                await self._push(follow, frame)
        if self._layer is None:
            return
        async with self._missed_lock:
            generation = self.generations.get(conversation_id)
            if conversation_id not in self._missed:
                # Repaired while this frame waited for the lock: send it as usual.
                if frame is not None and (remote or (generation is not None and generation.remote)):
                    await self._send_frames(conversation_id, [frame], single=True)
                return
            _since, lost = self._missed[conversation_id]
            running = (
                generation is not None
                and generation.announced
                and (frame is None or frame["type"] != "generation.finished")
            )
            snapshot = None
            if running:
                # Those who missed frames get the answer again as a follower would: the turn's opening
                # frames they lost, generation.started, a snapshot (it covers the delta being sent), then
                # the tool frames they lost, then this frame.
                snapshot = generation.snapshot()
                outgoing = [f for f in lost if f["type"] not in _TOOL_FRAMES]
                outgoing += [
                    frames.generation_started(
                        message_id=generation.message_id, conversation_id=conversation_id, model=generation.model
                    ),
                    snapshot,
                ]
                outgoing += [f for f in lost if f["type"] in _TOOL_FRAMES]
                covered = frame is None or frame["type"] == "generation.started" or (
                    frame["type"] == "delta" and frame["message"] == snapshot["message"] and frame["seq"] <= snapshot["seq"]
                )
                if not covered:
                    outgoing.append(frame)
            else:
                outgoing = []
                for lost_frame in [*lost, *([frame] if frame is not None else [])]:
                    if lost_frame["type"] == "generation.finished":
                        # Its generation.started may be among the frames lost: followers elsewhere need
                        # it to show the answer (a repeated one changes nothing).
                        outgoing.append(
                            frames.generation_started(
                                message_id=lost_frame["message"]["id"],
                                conversation_id=conversation_id,
                                model=lost_frame["message"]["model"],
                            )
                        )
                    outgoing.append(lost_frame)
            if outgoing and not await self._send_frames(conversation_id, outgoing):
                if frame is not None:
                    self._miss(conversation_id, frame)
                return
            del self._missed[conversation_id]
            if running:
                generation.remote = True  # so a later gap is seen (and repaired) by the followers elsewhere
                follows = self.follows.get(conversation_id)
                if follows:
                    snapshot = generation.snapshot()  # now: deltas may have streamed here during the send
                    for follow in list(follows.values()):
                        await self._push(follow, snapshot)

    async def _send_frames(self, conversation_id: UUID, frames_out: list[dict], *, single: bool = False) -> bool:
        """One group send of `frames_out`, in order (a list of frames is never a sync trigger)."""
        message = {"type": "hub.frame", "origin": self.process_id, "conversation": str(conversation_id)}
        if single:
            message["frame"] = frames_out[0]
        else:
            message["frames"] = frames_out
        sent = await self._send(conversation_id, message)
        if not sent and single:
            self._miss(conversation_id, frames_out[0])
        return sent

    async def _send(self, conversation_id: UUID, message: dict) -> bool:
        """group_send to the conversation's group; False (never an exception) when the layer fails."""
        if self._layer_down_until and time.monotonic() < self._layer_down_until:
            return False
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(LAYER_TIMEOUT):
                    await self._layer.group_send(group_name(conversation_id), message)
                break
            except Exception as error:
                # Once more at once on a new connection (the first send after a Redis restart meets a
                # pooled connection the restart closed), unless the time is spent already.
                if attempt == 2 or isinstance(error, TimeoutError):
                    self._layer_failed(error)
                    return False
        if self._layer_down_until:
            self._layer_answered()
        return True

    def _layer_skipping(self) -> bool:
        return bool(self._layer_down_until) and time.monotonic() < self._layer_down_until

    def _layer_failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self._layer_backoff = min(LAYER_RETRY_MAX, self._layer_backoff * 2) if self._layer_backoff else LAYER_RETRY_MIN
        self._layer_down_until = now + self._layer_backoff
        if now - self._layer_logged_at >= LOG_EVERY:
            self._layer_logged_at = now
            logger.warning(
                "Channel layer unreachable (%s): answers stream on to this process's followers; "
                "other processes get a snapshot once it answers.",
                error.__class__.__name__ or "timeout",
            )

    def _layer_answered(self) -> None:
        self._layer_down_until = 0.0
        self._layer_backoff = 0.0
        logger.warning("Channel layer answers again; repairing what other processes missed.")

    def _repair_soon(self) -> None:
        if self._repair_task is None or self._repair_task.done():
            self._repair_task = asyncio.ensure_future(self._repair())
            self._timers.add(self._repair_task)
            self._repair_task.add_done_callback(self._timers.discard)

    async def _repair(self) -> None:
        """Retry failed joins, syncs and sends until nothing is left to repair."""
        while self._unjoined or self._resync or self._missed or self._stops:
            await asyncio.sleep(REPAIR_INTERVAL)
            try:
                await self._repair_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub repair round failed; retrying")

    async def _repair_once(self) -> None:
        for conversation_id in list(self._unjoined):
            if conversation_id not in self.follows and conversation_id not in self.generations:
                self._unjoined.discard(conversation_id)
            elif await self._join(conversation_id):
                self._resync.add(conversation_id)  # frames sent while we were not in the group are lost
        for conversation_id in list(self._resync):
            if await self._resync_follows(conversation_id):
                self._resync.discard(conversation_id)
        now = time.monotonic()
        for message_id, (since, conversation_id, stop) in list(self._stops.items()):
            if now - since > STOP_MAX_AGE or await self._send(conversation_id, stop):
                self._stops.pop(message_id, None)
        for conversation_id, (since, _lost) in list(self._missed.items()):
            if conversation_id not in self.generations and now - since > MISSED_MAX_AGE:
                self._missed.pop(conversation_id, None)  # the followers elsewhere have resubscribed long since
            elif not self._layer_skipping():
                await self._publish_missed(conversation_id, None)

    async def _resync_follows(self, conversation_id: UUID) -> bool:
        """Bring this process's followers of an answer running elsewhere up to date; False to retry."""
        follows = [f for f in self.follows.get(conversation_id, {}).values() if f.pending is None]
        if not follows or conversation_id in self.generations or self._layer is None:
            return True
        message = await _latest_answer(conversation_id)
        current = self.follows.get(conversation_id, {})
        follows = [f for f in follows if current.get(id(f.subscriber)) is f and f.pending is None]
        if message is None or not follows or conversation_id in self.generations:
            return True
        if message.is_terminal:
            for follow in follows:
                await self._push(follow, frames.generation_finished(message))
            return True
        message_id = str(message.id)
        for follow in follows:
            if message_id not in follow.last_seq:  # its generation.started may be what was lost
                await self._push(
                    follow,
                    frames.generation_started(message_id=message.id, conversation_id=conversation_id, model=message.model),
                )
        follows = [f for f in follows if f.pending is None]
        # A snapshot (not a replay after the last seq): what the loss of the layer ends in.
        return not follows or await self._sync_remote(follows, conversation_id, message_id)

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
            # (A join that fails is retried by the repair loop, which then brings this follower up to date.)
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
            if frame["type"] == "delta" and frame["seq"] > follow.last_seq.get(frame["message"], frame["seq"] - 1) + 1:
                # Not contiguous with the catch-up (a snapshot of the saved text, older than the live
                # deltas): pass nothing of the gap on; the repair loop asks the owner for the rest.
                follow.buffer = [f for f in follow.buffer if f["type"] != "delta" or f["message"] != frame["message"]]
                self._resync.add(follow.conversation_id)
                self._repair_soon()
                continue
            if follow.wants(frame):
                try:
                    await follow.subscriber.deliver(frame)
                except Exception:
                    self._remove(follow)
                    return
        follow.pending = None

    async def _sync_remote(
        self,
        follows: list[_Follow],
        conversation_id: UUID,
        message_id: str,
        *,
        after_seq: int | None = None,
        started: bool = False,
        buffered: tuple[dict, ...] = (),
    ) -> bool:
        """Ask the process running the answer for the deltas after `after_seq` (or a snapshot; led by
        its generation.started when `started`); fall back to the database (a snapshot) when it does not
        answer. `buffered`: frames that arrived meanwhile, passed on after the catch-up. False when the
        request could not be sent (the database answered instead; the caller retries)."""
        nonce = uuid.uuid4().hex
        for follow in follows:
            follow.pending = message_id
            follow.nonce = nonce
            follow.buffer = list(buffered)
            # Deltas up to after_seq are the client's already (a snapshot in the answer resets this).
            if after_seq is None:
                follow.last_seq.pop(message_id, None)
            else:
                follow.last_seq[message_id] = after_seq
        request = {
            "type": "hub.sync",
            "origin": self.process_id,
            "conversation": str(conversation_id),
            "message": message_id,
            "nonce": nonce,
            "after_seq": after_seq,
        }
        if started:
            request["started"] = True
        if not await self._send(conversation_id, request):
            self._resync.add(conversation_id)
            self._repair_soon()
            await self._sync_fallback(follows, nonce)
            return False
        task = asyncio.ensure_future(self._sync_timeout(follows, nonce))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
        return True

    async def _sync_timeout(self, follows: list[_Follow], nonce: str) -> None:
        await asyncio.sleep(SYNC_TIMEOUT)
        try:
            await self._sync_fallback(follows, nonce)
        except Exception:
            logger.exception("catching up from the database failed")
            for follow in follows:
                if follow.nonce == nonce:
                    follow.nonce = None
                    await self._drain(follow)

    async def _sync_fallback(self, follows: list[_Follow], nonce: str) -> None:
        """Nobody answered (or could be asked): the answer ended meanwhile, or its process died, or
        the layer is down. The database decides."""
        waiting = [f for f in follows if f.nonce == nonce and f.pending is not None]
        if not waiting:
            return
        message = await _message_state(waiting[0].pending)
        for follow in waiting:
            if follow.nonce != nonce or follow.pending is None:
                continue
            follow.nonce = None
            if message is None:
                follow.pending = None
                follow.buffer = []
                continue
            message_id = str(message.id)
            replay = []
            # A follower that has the saved text already (a retry while the layer is down) gets nothing new.
            if message.is_terminal or follow.last_seq.get(message_id) != message.last_seq:
                replay.append(frames.message_snapshot(message_id=message.id, seq=message.last_seq, content=message.content))
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
            stop = {"type": "hub.stop", "origin": self.process_id, "message": str(message_id)}
            if not await self._send(conversation_id, stop):
                # Sent again by the repair loop when the layer answers (stopping twice changes nothing).
                self._stops[message_id] = (time.monotonic(), conversation_id, stop)
                self._repair_soon()
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
        self._unjoined.clear()
        self._resync.clear()
        self._missed.clear()
        self._stops.clear()

    # --- the channel layer ------------------------------------------------------------------

    async def _join(self, conversation_id: UUID) -> bool:
        """Join the conversation's group; False (never an exception) when the layer fails: the
        repair loop retries, then brings this process's followers up to date."""
        if conversation_id in self._joined:
            return True
        if self._layer_skipping():
            self._unjoined.add(conversation_id)
            self._repair_soon()
            return False
        self._joined.add(conversation_id)
        try:
            async with asyncio.timeout(LAYER_TIMEOUT):
                async with self._channel_lock:
                    if self._channel is None:
                        self._channel = await self._layer.new_channel(prefix=f"hub.{self.process_id}.")
                    if self._listener is None or self._listener.done():
                        self._listener = asyncio.ensure_future(self._listen(self._channel))
                await self._layer.group_add(group_name(conversation_id), self._channel)
        except Exception as error:
            self._joined.discard(conversation_id)
            self._unjoined.add(conversation_id)
            self._layer_failed(error)
            self._repair_soon()
            return False
        self._unjoined.discard(conversation_id)
        if self._layer_down_until:
            self._layer_answered()
        return True

    async def _leave(self, conversation_id: UUID) -> None:
        self._unjoined.discard(conversation_id)
        if conversation_id not in self._joined:
            return
        self._joined.discard(conversation_id)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LAYER_TIMEOUT):
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
                if message.get("started"):
                    started = frames.generation_started(
                        message_id=generation.message_id, conversation_id=generation.conversation_id, model=generation.model
                    )
                    reply = {"frames": [started, *replay]}
                # A snapshot goes as `frame` (what every version of the hub reads), deltas as `frames`.
                elif replay and replay[0]["type"] == "message.snapshot":
                    reply = {"frame": replay[0]}
                else:
                    reply = {"frames": replay}
                await self._send(
                    generation.conversation_id,
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
        conversation_id = _as_uuid(message.get("conversation"))
        follows = self.follows.get(conversation_id)
        if not follows:
            return
        if "frames" in message:
            # Several frames at once: what a blip made us miss (generation.started, a snapshot …), sent
            # by the owner when the layer answered again. It is a catch-up already: no sync follows.
            for frame in message["frames"]:
                if frame["type"] == "delta":
                    await self._on_remote_delta(conversation_id, follows, frame)
                else:
                    for follow in list(follows.values()):
                        await self._push(follow, frame)
            return
        frame = message["frame"]
        if frame["type"] == "delta":
            await self._on_remote_delta(conversation_id, follows, frame)
            return
        for follow in list(follows.values()):
            await self._push(follow, frame)
        if frame["type"] == "generation.started":
            # A new answer in another process: ask it to send us its deltas too.
            live = [f for f in follows.values() if f.pending is None]
            if live:
                await self._sync_remote(live, conversation_id, frame["message"]["id"])

    async def _on_remote_delta(self, conversation_id: UUID, follows: dict[int, _Follow], frame: dict) -> None:
        """A delta from another process; a follower that missed some before it asks for them first."""
        message_id, seq = frame["message"], frame["seq"]
        gaps: list[_Follow] = []
        unseen = False
        for follow in list(follows.values()):
            if follow.pending is None and message_id not in follow.finished:
                known = follow.last_seq.get(message_id)
                if seq > (known or 0) + 1:
                    gaps.append(follow)
                    unseen = unseen or known is None  # its generation.started was lost too
                    continue
            await self._push(follow, frame)
        if gaps:
            # A snapshot from the owner, then the live deltas after it (this one is buffered meanwhile).
            await self._sync_remote(gaps, conversation_id, message_id, started=unseen, buffered=(frame,))


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
