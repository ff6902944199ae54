"""Streaming over HTTP: the REST API's SSE (the websocket's frames) and the OpenAI-compatible stream.

A client that goes away mid-stream leaves the answer finished and billed exactly once.
"""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import pytest

from billing.models import LedgerEntry, Reservation
from conversations.models import Message
from tests.api.conftest import bearer, parse_sse
from tests.fakeprovider.script import reply, stream_error

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def test_sse_deltas_join_to_the_stored_message(http, key_a):
    response = http.post(
        "/api/v1/conversations/send/", json={"content": "/long", "stream": True}, headers=bearer(key_a)
    )
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    frames = [json.loads(data) for _, data in events]
    # SSE event names are the websocket frame types
    assert all(event == frame["type"] for (event, _), frame in zip(events, frames, strict=True))
    kinds = [f["type"] for f in frames]
    assert kinds[:3] == ["conversation.created", "message.created", "generation.started"]
    assert kinds[-1] == "generation.finished"
    answer_id = frames[2]["message"]["id"]
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    joined = "".join(d["text"] for d in deltas)
    finished = frames[-1]["message"]
    assert finished["status"] == "complete" and finished["content"] == joined and len(joined) > 200
    stored = Message.objects.get(id=answer_id)
    assert stored.content == joined and stored.status == "complete"
    assert LedgerEntry.objects.filter(message_id=answer_id).count() == 1


def test_sse_client_disconnect_leaves_the_answer_finished_and_billed_once(parley_server, key_a, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.005  # ~2 s for /long: time to go away in the middle
    with httpx.Client(base_url=parley_server.url, timeout=30) as client:
        with client.stream(
            "POST", "/api/v1/conversations/send/", json={"content": "/long", "stream": True}, headers=bearer(key_a)
        ) as response:
            answer_id, deltas = None, 0
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frame = json.loads(line[6:])
                    if frame["type"] == "generation.started":
                        answer_id = frame["message"]["id"]
                    elif frame["type"] == "delta":
                        deltas += 1
                        if deltas == 3:
                            break
    assert answer_id is not None
    message = wait_for(lambda: Message.objects.filter(id=answer_id, status__in=["complete", "failed", "cancelled", "interrupted"]).first())
    assert message.status == "complete" and len(message.content) > 200  # the answer went on without the client
    wait_for(lambda: not Reservation.objects.filter(request_id=answer_id, status="open").exists())
    time.sleep(0.3)
    assert LedgerEntry.objects.filter(message_id=answer_id).count() == 1


def test_stop_a_streaming_answer(parley_server, key_a, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.01
    with httpx.Client(base_url=parley_server.url, timeout=30) as client:
        with client.stream(
            "POST", "/api/v1/conversations/send/", json={"content": "/long", "stream": True}, headers=bearer(key_a)
        ) as response:
            frames, stopped = [], None
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                frame = json.loads(line[6:])
                frames.append(frame)
                if frame["type"] == "delta" and stopped is None:
                    answer_id = frames[2]["message"]["id"]
                    stopped = client.post(f"/api/v1/messages/{answer_id}/stop/", headers=bearer(key_a))
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "cancelled"
    finished = frames[-1]
    assert finished["type"] == "generation.finished" and finished["message"]["status"] == "cancelled"
    joined = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert finished["message"]["content"] == joined
    assert Message.objects.get(id=answer_id).content == joined
    assert LedgerEntry.objects.filter(message_id=answer_id).count() == 1


def test_openai_stream_disconnect_settles_once(parley_server, key_a, fake_provider, org_a):
    fake_provider.openai.script(reply(*[f"w{i} " for i in range(60)], delta_delay=0.03, usage=(30, 60)))
    with httpx.Client(base_url=parley_server.url, timeout=30) as client:
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "gpt-5.2-instant", "messages": [{"role": "user", "content": "go"}], "stream": True},
            headers=bearer(key_a),
        ) as response:
            assert response.status_code == 200
            seen = 0
            completion_id = None
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    completion_id = chunk["id"]
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        seen += 1
                        if seen == 3:
                            break
    assert completion_id is not None
    rows = wait_for(lambda: list(LedgerEntry.objects.filter(turn_request_id=completion_id)))
    wait_for(lambda: not Reservation.objects.filter(request_id=completion_id, status="open").exists())
    time.sleep(0.5)
    rows = list(LedgerEntry.objects.filter(turn_request_id=completion_id))
    assert len(rows) == 1
    # the provider was stopped early: billed for what was streamed, not for the whole answer
    assert rows[0].output_tokens < 60


def test_openai_stream_wire_format(http, key_a):
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": "demo",
            "messages": [{"role": "user", "content": "/echo wire"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=bearer(key_a),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "wire"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])


def test_openai_error_object_before_streaming(http, key_a):
    response = http.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers=bearer(key_a),
    )
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "code", "param"}
    response = http.post("/v1/chat/completions", content=b"{not json", headers=bearer(key_a))
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = http.get("/v1/chat/completions", headers=bearer(key_a))
    assert response.status_code == 405
    response = http.post("/v1/chat/completions", json={"model": "demo", "messages": []})
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"


def test_openai_stream_failing_midway_ends_with_the_error_event_and_nothing_after(http, key_a, fake_provider, org_a):
    fake_provider.openai.script(stream_error("server", after=2))
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-5.2-instant",
            "messages": [{"role": "user", "content": "go"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=bearer(key_a),
    )
    assert response.status_code == 200
    events = [block for block in response.text.split("\n\n") if block]
    assert "data: [DONE]" not in events  # not an answer that ended normally
    chunks = [json.loads(event[6:]) for event in events]
    *answer, last = chunks
    assert set(last) == {"error"} and last["error"]["code"] == "provider_error"
    assert last["error"]["type"] == "api_error"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in answer) == "part0 part1 "
    assert not [c for c in answer if c["choices"] and c["choices"][0]["finish_reason"]]
    assert not [c for c in answer if c.get("usage")]
    completion_id = answer[0]["id"]
    wait_for(lambda: not Reservation.objects.filter(request_id=completion_id, status="open").exists())
    assert LedgerEntry.objects.filter(turn_request_id=completion_id).count() == 1
