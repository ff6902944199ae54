"""The clients of the fault suite: websocket turns, `/v1` turns through the official `openai` SDK,
and a prober that keeps asking every process while a fault is on.

Each prompt carries a tag (`[t-<39 digits>]`) and a word that tells the fake provider's responder
(`responder`) how to answer: `SLOW` (SLOW_DELTAS words, DELTA_DELAY apart: a few seconds, long enough
to break something in the middle), `LONG` (more words than any output cap: the answer is cut at the
request's max tokens, so it costs exactly the most it may), anything else a short answer. The tag finds the fake's record of
the turn (`fake_requests`), which is the vendor's side of the books.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import openai
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fakeprovider import VENDOR_USAGE, FakeProviderServer, RecordedRequest, reply

DELTA_DELAY = 0.05  # seconds between two of the fake's deltas in a SLOW answer
SLOW_DELTAS = 100  # a SLOW answer: about 5 s (a fault starts about 1 s in, and ends before it does)
LONG_DELTAS = 400  # a LONG answer: more words than the output cap of any request in the suite
LONG_DELTA_DELAY = 0.02  # so that a budget's turns overlap (32 deltas: about 0.6 s)

# Words that are one o200k token each, also when joined: a text's token count is its word count, so
# Parley's estimate from saved text and the fake's count of sent deltas can be compared exactly.
WORDS = [
    " " + w
    for w in (
        "the a cat sat on mat and dog ran far away from home to see big red sun rise over hill while birds sang "
        "song of new day light fell soft green field river flowed slow past old town where people slept quiet "
        "dream until bell rang morning came bright warm wind blew through tall trees leaves danced air smelled "
        "sweet rain"
    ).split()
]


def words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


FOLLOWUP_PROMPTS = ("Write a short title", "Summarize the conversation below")  # conversations.tasks


def is_followup(request: RecordedRequest) -> bool:
    """A title or summary call the worker makes after a turn (its prompt quotes the turn's)."""
    body = json.dumps(request.body, ensure_ascii=False)
    return any(marker in body for marker in FOLLOWUP_PROMPTS)


def responder(request: RecordedRequest):
    """The fake's answer to a request, chosen by its prompt (every vendor bills by its own count)."""
    body = json.dumps(request.body, ensure_ascii=False)
    if is_followup(request):
        return reply(*words(4), usage=VENDOR_USAGE)
    if "SLOW" in body:
        return reply(*words(SLOW_DELTAS), delta_delay=DELTA_DELAY, usage=VENDOR_USAGE)
    if "LONG" in body:
        return reply(*words(LONG_DELTAS), delta_delay=LONG_DELTA_DELAY, usage=VENDOR_USAGE)
    return reply(*words(5), usage=VENDOR_USAGE)


def install_responder(fake: FakeProviderServer) -> None:
    for vendor in (fake.openai, fake.anthropic, fake.gemini):
        vendor.default = responder


def new_tag() -> str:
    """39 decimal digits: tiktoken cuts digits into groups of three, so every tag (and every prompt of
    one kind) is the same number of tokens, and the same number of bytes."""
    return f"[t-{uuid.uuid4().int:039d}]"


def fake_requests(fake: FakeProviderServer, tag: str) -> list[RecordedRequest]:
    """Every request the fake got for the turn with this tag (retries and fallbacks included; not the
    title call that quotes its prompt)."""
    found = []
    for vendor in (fake.openai, fake.anthropic, fake.gemini):
        with vendor._lock:
            requests = list(vendor.requests)
        found.extend(r for r in requests if tag in json.dumps(r.body, ensure_ascii=False) and not is_followup(r))
    return found


@dataclass
class Turn:
    """One answer as its client saw it."""

    entry: str  # "ws" | "v1"
    process: int  # which Daphne it was sent to
    model: str
    prompt: str
    tag: str
    turn_id: str | None = None  # ws: the assistant message id; /v1: the completion id (both the turn's request id)
    conversation_id: str | None = None
    deltas: list[str] = field(default_factory=list)
    status: str | None = None  # ws: generation.finished status; /v1: "complete" | "failed"
    finish_reason: str | None = None
    final_content: str | None = None  # ws: generation.finished content
    usage: dict[str, Any] | None = None
    error: str | None = None  # an error code, or the exception
    http_status: int | None = None
    content_type: str | None = None
    disconnected: bool = False  # the connection died under the client
    seq_ok: bool = True  # ws: deltas numbered 1, 2, 3 … without a gap
    started_at: float = 0.0
    first_delta_at: float | None = None
    ended_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def saw_text(self) -> bool:
        return bool(self.deltas)

    @property
    def completed(self) -> bool:
        return self.status == "complete"

    def describe(self) -> str:
        return (f"{self.entry}@{self.process} {self.model} id={self.turn_id} status={self.status} "
                f"error={self.error} http={self.http_status} disconnected={self.disconnected} deltas={len(self.deltas)}")


def prompt_for(kind: str, tag: str, filler: str = "") -> str:
    return f"{tag} {kind} Please answer. {filler}".strip()


# --- websocket ---------------------------------------------------------------------------------


def ws_connect(url: str, secret: str):
    return connect(url, additional_headers=[("Authorization", f"Bearer {secret}")], ping_interval=None,
                   open_timeout=20, max_size=2**22)


async def ws_turn(url: str, secret: str, *, process: int, model: str, kind: str = "SLOW", filler: str = "",
                  deadline: float = 90.0, started: asyncio.Event | None = None, track: list[Turn] | None = None) -> Turn:
    """One `message.send` on a socket of its own, until generation.finished, an error frame or the socket dies.
    `started` is set at the first delta (or the end); `track` gets the Turn at once (to watch it fill)."""
    tag = new_tag()
    turn = Turn("ws", process, model, prompt_for(kind, tag, filler), tag, started_at=time.monotonic())
    if track is not None:
        track.append(turn)
    try:
        async with asyncio.timeout(deadline), ws_connect(url, secret) as ws:
            await ws.send(json.dumps({"type": "message.send", "conversation": None, "content": turn.prompt,
                                      "model": model, "client_id": str(uuid.uuid4())}))
            expected = 1
            while True:
                frame = json.loads(await ws.recv())
                kind_ = frame.get("type")
                if kind_ == "conversation.created":
                    turn.conversation_id = frame["conversation"]["id"]
                elif kind_ == "generation.started":
                    turn.turn_id = frame["message"]["id"]
                    turn.conversation_id = frame["message"]["conversation"]
                elif kind_ == "delta" and frame.get("message") == turn.turn_id:
                    if frame["seq"] != expected:
                        turn.seq_ok = False
                    expected = frame["seq"] + 1
                    turn.deltas.append(frame["text"])
                    if turn.first_delta_at is None:
                        turn.first_delta_at = time.monotonic()
                        if started is not None:
                            started.set()
                elif kind_ == "message.snapshot" and frame.get("message") == turn.turn_id:
                    turn.deltas = [frame["content"]]
                    expected = frame["seq"] + 1
                elif kind_ == "generation.finished" and frame["message"]["id"] == turn.turn_id:
                    message = frame["message"]
                    turn.status = message["status"]
                    turn.final_content = message["content"]
                    turn.usage = message.get("usage")
                    turn.error = (message.get("error") or {}).get("code")
                    break
                elif kind_ == "error":
                    turn.status, turn.error = "refused", frame.get("code")
                    break
    except (ConnectionClosed, OSError) as exc:
        turn.disconnected = True
        turn.error = turn.error or type(exc).__name__
    except InvalidStatus as exc:
        turn.status, turn.http_status = "refused", exc.response.status_code
        turn.content_type = exc.response.headers.get("content-type")
        turn.error = f"upgrade answered {exc.response.status_code}"
    except TimeoutError:
        turn.error = "client timeout"
    finally:
        turn.ended_at = time.monotonic()
        if started is not None:
            started.set()
    return turn


# --- /v1 (the official openai SDK) ---------------------------------------------------------------


def v1_client(base_url: str, secret: str, timeout: float = 90.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=secret, max_retries=0, timeout=timeout)


async def v1_turn(base_url: str, secret: str, *, process: int, model: str, kind: str = "SLOW", filler: str = "",
                  max_tokens: int | None = None, deadline: float = 90.0, started: asyncio.Event | None = None,
                  track: list[Turn] | None = None) -> Turn:
    """One streamed completion through the official SDK (stream=True, usage included)."""
    tag = new_tag()
    turn = Turn("v1", process, model, prompt_for(kind, tag, filler), tag, started_at=time.monotonic())
    if track is not None:
        track.append(turn)
    options: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}
    client = v1_client(base_url, secret, deadline)
    try:
        async with asyncio.timeout(deadline):
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": turn.prompt}], stream=True,
                stream_options={"include_usage": True}, **options,
            )
            async for chunk in stream:
                turn.turn_id = turn.turn_id or chunk.id
                if chunk.usage is not None:
                    turn.usage = chunk.usage.model_dump()
                for choice in chunk.choices:
                    if choice.delta.content:
                        turn.deltas.append(choice.delta.content)
                        if turn.first_delta_at is None:
                            turn.first_delta_at = time.monotonic()
                            if started is not None:
                                started.set()
                    if choice.finish_reason:
                        turn.finish_reason = choice.finish_reason
            turn.status = "complete" if turn.finish_reason else "failed"
    except openai.APIStatusError as exc:  # an HTTP error answer, before any chunk
        turn.status = "refused"
        turn.http_status = exc.status_code
        turn.content_type = exc.response.headers.get("content-type")
        turn.error = _openai_code(exc)
    except openai.APIConnectionError as exc:
        turn.disconnected = True
        turn.status = "failed" if turn.saw_text else None
        turn.error = type(exc).__name__
    except openai.APIError as exc:  # an error event in the stream, after some chunks
        turn.status = "failed"
        turn.error = _openai_code(exc)
    except TimeoutError:
        turn.error = "client timeout"
    finally:
        turn.ended_at = time.monotonic()
        await client.close()
        if started is not None:
            started.set()
    return turn


def _openai_code(exc: openai.APIError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    code = inner.get("code") if isinstance(inner, dict) else None
    return str(code or getattr(exc, "code", None) or type(exc).__name__)


# --- availability while a fault is on ------------------------------------------------------------


@dataclass
class Sample:
    at: float
    process: int
    what: str
    status: int | None  # None: no answer (connection refused or reset, timeout)
    content_type: str = ""
    retry_after: str | None = None
    body: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    @property
    def html(self) -> bool:
        return "html" in self.content_type or self.body.lstrip().lower().startswith(("<!doctype", "<html"))


class Prober:
    """Asks every process the same three things every `interval` s while running:
    `GET /v1/models`, `GET /api/v1/conversations/` (REST with a key) and a short `/v1` completion of
    the built-in `demo` model (authorization, budget, rate limits and settlement, no provider)."""

    def __init__(self, urls: list[str], secret: str, *, interval: float = 0.5) -> None:
        self.urls = urls
        self.secret = secret
        self.interval = interval
        self.samples: list[Sample] = []
        self._task: asyncio.Task | None = None
        self._asking: set[asyncio.Task] = set()
        self._skip: set[int] = set()

    def skip(self, process: int) -> None:
        """Stop asking a process (killed on purpose: its refused connections say nothing)."""
        self._skip.add(process)

    def resume(self, process: int) -> None:
        self._skip.discard(process)

    async def __aenter__(self) -> Prober:
        self._client = httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {self.secret}"})
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for ask in list(self._asking):
            ask.cancel()
        await asyncio.gather(*self._asking, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        # A new round every `interval`, whatever the last one is waiting for: a request that hangs
        # while the database is away does not stop the next ones from being sent.
        while True:
            for i, url in enumerate(self.urls):
                if i in self._skip:
                    continue
                for what in ("models", "rest", "demo"):
                    task = asyncio.create_task(self._ask(i, url, what))
                    self._asking.add(task)
                    task.add_done_callback(self._asking.discard)
            await asyncio.sleep(self.interval)

    async def _ask(self, process: int, url: str, what: str) -> None:
        at = time.monotonic()
        try:
            if what == "models":
                response = await self._client.get(url + "/v1/models")
            elif what == "rest":
                response = await self._client.get(url + "/api/v1/conversations/")
            else:
                response = await self._client.post(url + "/v1/chat/completions", json={
                    "model": "demo", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 3})
        except httpx.HTTPError as exc:
            self.samples.append(Sample(at, process, what, None, error=type(exc).__name__))
            return
        self.samples.append(Sample(at, process, what, response.status_code, response.headers.get("content-type", ""),
                                   response.headers.get("retry-after"), response.text[:300]))

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]



# --- a watcher on another process ----------------------------------------------------------------


@dataclass
class Watch:
    """A socket following a conversation that streams on another process (frames through Redis)."""

    conversation_id: str
    message_id: str | None = None
    text: str = ""
    seq: int = 0
    gap_open: bool = False  # a delta came after a gap, and no snapshot has covered it since
    gaps: int = 0
    snapshots: int = 0
    finished: bool = False
    final_content: str | None = None
    error: str | None = None

    @property
    def consistent(self) -> bool:
        """It ended with generation.finished, no gap was left unrepaired by a snapshot, and what it
        reconstructed (snapshots, then the deltas after them) is the final content or its start
        (deltas the server never sent, with nothing after them, are told by generation.finished)."""
        return (self.finished and not self.gap_open and self.final_content is not None
                and self.final_content.startswith(self.text))


async def watch(url: str, secret: str, conversation_id: str, *, deadline: float = 90.0) -> Watch:
    """Subscribe and follow the conversation's answer to its generation.finished, by the protocol:
    a snapshot replaces the text; a delta is appended when it is the next seq; an older one is a
    duplicate; a newer one is a gap (the watcher does not ask again: the server owes it a snapshot)."""
    seen = Watch(conversation_id)
    try:
        async with asyncio.timeout(deadline), ws_connect(url, secret) as ws:
            await ws.send(json.dumps({"type": "conversation.subscribe", "conversation": conversation_id}))
            while True:
                frame = json.loads(await ws.recv())
                kind = frame.get("type")
                if kind == "generation.started":
                    seen.message_id = frame["message"]["id"]
                elif kind == "message.snapshot" and frame.get("message") == seen.message_id:
                    seen.text, seen.seq, seen.gap_open = frame["content"], frame["seq"], False
                    seen.snapshots += 1
                elif kind == "delta" and frame.get("message") == seen.message_id:
                    if frame["seq"] == seen.seq + 1 and not seen.gap_open:
                        seen.text += frame["text"]
                        seen.seq = frame["seq"]
                    elif frame["seq"] > seen.seq + 1 and not seen.gap_open:
                        seen.gap_open = True
                        seen.gaps += 1
                elif kind == "generation.finished" and frame["message"]["id"] == seen.message_id:
                    seen.finished, seen.final_content = True, frame["message"]["content"]
                    return seen
                elif kind == "error":
                    seen.error = frame.get("code")
                    return seen
    except (ConnectionClosed, OSError, TimeoutError) as exc:
        seen.error = type(exc).__name__
    return seen
