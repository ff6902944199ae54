"""Thousands of malformed frames on one socket: each is answered by an `error` frame (never
`internal_error`), nothing is logged as an error, and the socket still works afterwards.

The frames come from a seeded generator (PARLEY_FUZZ_SEED picks another seed, PARLEY_FUZZ_FRAMES
another count): deep nesting, lone surrogates and NUL characters anywhere, every field of every
client frame with a value of the wrong type, JSON that is not an object or not JSON at all, numbers
too long to parse, binary frames, and frames of 1 MB.
"""

import json
import logging
import os
import random
import uuid

import pytest
from channels.db import database_sync_to_async

from conversations.models import Message
from tests.conversations.conftest import joined_deltas, wait_idle

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

SEED = int(os.environ.get("PARLEY_FUZZ_SEED", "20250110"))
COUNT = int(os.environ.get("PARLEY_FUZZ_FRAMES", "3000"))
BATCH = 50  # frames sent before their answers are read (the consumer answers them in order)
FRAME_LIMIT = 64 * 1024
MEGABYTE = 1024 * 1024

# Every client frame with all its fields well-formed (ids unknown to the server).
FIELDS = {
    "message.send": {"conversation": None, "content": "hi", "model": "demo", "client_id": "uuid"},
    "message.regenerate": {"conversation": "uuid", "client_id": "uuid"},
    "message.edit": {"message": "uuid", "content": "hi", "client_id": "uuid"},
    "generation.stop": {"message": "uuid"},
    "conversation.subscribe": {"conversation": "uuid", "after_seq": 3},
    "conversation.unsubscribe": {"conversation": "uuid"},
}
REQUIRED = {
    "message.send": ["content", "client_id"],
    "message.regenerate": ["conversation", "client_id"],
    "message.edit": ["message", "content", "client_id"],
    "generation.stop": ["message"],
    "conversation.subscribe": ["conversation"],
    "conversation.unsubscribe": ["conversation"],
}
# What a field must not be: each of these makes the frame invalid for that field.
WRONG = {
    "conversation": [5, 1.5, True, [], {}, "not-a-uuid", "", "\ud800", str(uuid.uuid4()) + "x"],
    "message": [None, 5, True, [], {"id": "x"}, "nope", "\udfff", "0" * 100],
    "client_id": [None, 7, False, [], {}, "", "not-a-uuid", "\ud83d", "\x00"],
    "content": [None, 42, 4.2, True, [], {}, ["hi"], {"text": "hi"}, "", "   ", "\ud800", "a\udc00b", "nul\x00"],
    "model": [5, True, [], {}, ["demo"], "\ud800"],
    "after_seq": [-1, 1.5, "3", True, [], {}, "x", "\x00"],
    "type": [None, 5, True, [], {}, "", "nope", "message.send ", "MESSAGE.SEND", "\ud800", "ping\x00"],
}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _nested(rng: random.Random, depth: int) -> object:
    value: object = rng.choice(["x", 1, None, "\ud800"])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _well_formed(rng: random.Random, kind: str) -> dict:
    frame: dict = {"type": kind}
    for field, example in FIELDS[kind].items():
        frame[field] = _uuid(rng) if example == "uuid" else example
    return frame


def _broken_text(rng: random.Random) -> tuple[str | bytes, set[str]]:
    """One malformed frame as sent on the wire, and the error codes it may get."""
    kind = rng.choice(list(FIELDS))
    choice = rng.randrange(100)
    if choice < 40:  # one field of the wrong type or value
        frame = _well_formed(rng, kind)
        field = rng.choice([*FIELDS[kind], "type"])
        frame[field] = rng.choice(WRONG[field])
        return json.dumps(frame), {"invalid_input"}
    if choice < 50:  # a required field missing
        frame = _well_formed(rng, kind)
        del frame[rng.choice(REQUIRED[kind] + ["type"])]
        return json.dumps(frame), {"invalid_input"}
    if choice < 62:  # nesting, shallow to far beyond any parser's recursion limit
        depth = rng.choice([40, 100, 1000, 5000, 20000])
        frame = _well_formed(rng, kind)
        field = rng.choice([f for f in FIELDS[kind] if f != "after_seq"] or ["extra"])
        if depth > 900:
            # Built as text: json.dumps itself cannot write it.
            arrays = [rng.random() < 0.5 for _ in range(depth)]
            opening = "".join("[" if array else '{"k":' for array in arrays)
            closing = "".join("]" if array else "}" for array in reversed(arrays))
            text = json.dumps(frame)[:-1] + f', "{field}": {opening}1{closing}}}'
            return text, {"invalid_input", "frame_too_large"}
        frame[field] = _nested(rng, depth)
        return json.dumps(frame), {"invalid_input"}
    if choice < 70:  # a lone surrogate or NUL somewhere: a value, a key, an unknown field
        frame = _well_formed(rng, kind)
        bad = rng.choice(["\ud800", "\udbff", "\udc00", "x\udfffy", "\x00"])
        where = rng.randrange(3)
        if where == 0:
            frame[rng.choice(list(FIELDS[kind]))] = bad
        elif where == 1:
            frame[bad] = "value"
        else:
            frame["extra"] = {"nested": [bad]}
        return json.dumps(frame), {"invalid_input"}
    if choice < 78:  # not a JSON object, or not JSON
        text = rng.choice(
            [
                "", " ", "{", "}", "[", "null", "true", "1", "-0", '"message.send"', "[]", "[{}]", "{'type': 'ping'}",
                '{"type": "ping",}', '{"type": NaN', "\x00", "\ufeff{}", '{"type": "message.send"', "1" * 5000,
                '{"type": "conversation.subscribe", "conversation": "' + _uuid(rng) + '", "after_seq": ' + "9" * 5000 + "}",
            ]
        )
        return text, {"invalid_input"}
    if choice < 84:  # binary frames
        size = rng.choice([0, 1, 17, 4096])
        return bytes(rng.getrandbits(8) for _ in range(size)), {"invalid_input"}
    if choice < 86:  # 1 MB, text or binary
        if rng.random() < 0.5:
            return b"\x00" * MEGABYTE, {"frame_too_large"}
        frame = _well_formed(rng, "message.send")
        frame["content"] = "x" * MEGABYTE
        return json.dumps(frame), {"frame_too_large"}
    if choice < 88:  # just over the limit
        frame = _well_formed(rng, kind)
        frame["padding"] = "é" * (FRAME_LIMIT // 2)
        return json.dumps(frame, ensure_ascii=False), {"frame_too_large"}
    # Well-formed frames about ids that do not exist (or are not yours): not_found, nothing else.
    frame = _well_formed(rng, kind)
    if kind == "conversation.unsubscribe":
        frame["conversation"] = 12  # unsubscribing from an unknown conversation is fine: make it invalid
        return json.dumps(frame), {"invalid_input"}
    if kind == "message.send":
        frame["conversation"] = _uuid(rng)
    return json.dumps(frame), {"not_found"}


def _frames(count: int, seed: int) -> list[tuple[str | bytes, set[str]]]:
    rng = random.Random(seed)
    return [_broken_text(rng) for _ in range(count)]


async def test_thousands_of_malformed_frames_get_error_frames_and_leave_the_socket_usable(
    org_a, member_secret, ws_connect, caplog
):
    caplog.set_level(logging.ERROR)
    cases = _frames(COUNT, SEED)
    assert len(cases) == COUNT
    client = await ws_connect(secret=await member_secret(org_a.member))
    codes: dict[str, int] = {}
    for start in range(0, len(cases), BATCH):
        batch = cases[start : start + BATCH]
        for data, _ in batch:
            # send_input, not send_to: send_to refuses empty frames.
            key = "bytes" if isinstance(data, bytes) else "text"
            await client.communicator.send_input({"type": "websocket.receive", key: data})
        for index, (data, allowed) in enumerate(batch, start):
            answer = await client.receive()
            shown = data[:120] if isinstance(data, str) else f"<{len(data)} bytes>"
            assert answer["type"] == "error", (index, shown, answer)
            assert answer["code"] in allowed, (index, shown, answer)
            assert answer["message"] and "retry_after" in answer
            codes[answer["code"]] = codes.get(answer["code"], 0) + 1
    assert set(codes) == {"invalid_input", "frame_too_large", "not_found"}, codes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:2000]

    # The same socket still works.
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}
    assert await database_sync_to_async(Message.objects.count)() == 0  # no malformed frame started a turn
    client_id = await client.send_message("/echo still here")
    frames = await client.until_finished()
    assert frames[1]["message"]["client_id"] == client_id
    assert frames[-1]["message"]["status"] == "complete"
    assert joined_deltas(frames, frames[-1]["message"]["id"]) == "still here"
    await wait_idle()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:2000]
