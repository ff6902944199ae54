"""Who may use the chat websocket: at the upgrade, and again before every turn (docs/protocol.md).

A socket that may not be used is accepted and closed at once with a close code clients can read
(4401 unauthenticated, 4403 permission denied), after an `error` frame saying why: a refused upgrade
would be a bare HTTP 403 for real clients (Daphne, uvicorn), without a close code. A key revoked, a
member removed or a plan changed while a socket is open applies to that socket's next turn.
"""

import logging
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client as HttpClient
from django.utils import timezone

from accounts.middleware import SESSION_KEY
from accounts.models import ApiKey, Tier
from accounts.services import api_key_revoke, membership_remove
from billing.models import LedgerEntry, Reservation
from conversations.models import Conversation, Message
from tests.conversations.conftest import wait_idle

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


async def closed_with(client) -> int:
    """The close code the server sent next (after any frames read before)."""
    output = await client.communicator.receive_output(timeout=10)
    assert output["type"] == "websocket.close", output
    return output["code"]


async def refused(ws_connect, **connect) -> tuple[dict, int]:
    """Open a socket that must be refused: (the error frame, the close code)."""
    client = await ws_connect(**connect)  # accepted: a close code needs an accepted socket
    error = await client.receive()
    return error, await closed_with(client)


def _session_headers(membership, origin: bytes = b"http://localhost:8000") -> list[tuple[bytes, bytes]]:
    http = HttpClient()
    http.force_login(membership.user)
    session = http.session
    session[SESSION_KEY] = str(membership.organization_id)
    session.save()
    cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}"
    headers = [(b"cookie", cookie.encode())]
    if origin:
        headers.append((b"origin", origin))
    return headers


@database_sync_to_async
def _rows() -> tuple[set, ...]:
    """The ids of every reservation, ledger row, message and conversation (nothing new may appear)."""
    return tuple(
        set(model.objects.values_list("id", flat=True)) for model in (Reservation, LedgerEntry, Message, Conversation)
    )


# --- at the upgrade ----------------------------------------------------------------------------


async def test_no_or_wrong_credentials_close_4401_with_an_error_frame(ws_connect, db):
    for connect in ({}, {"secret": "pk_not-a-real-key"}, {"headers": [(b"authorization", b"Basic dXNlcjpwdw==")]}):
        error, code = await refused(ws_connect, **connect)
        assert code == 4401, connect
        assert error["type"] == "error" and error["code"] == "unauthenticated" and error["message"], error


async def test_an_expired_or_revoked_key_closes_4401(org_a, api_key_factory, ws_connect):
    expiring, expiring_secret = await database_sync_to_async(api_key_factory)(
        org_a.member, expires_at=timezone.now() + timedelta(hours=1)
    )
    await database_sync_to_async(ApiKey.objects.filter(id=expiring.id).update)(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    error, code = await refused(ws_connect, secret=expiring_secret)
    assert code == 4401 and error["code"] == "unauthenticated" and "expired" in error["message"]

    key, secret = await database_sync_to_async(api_key_factory)(org_a.member)
    await database_sync_to_async(api_key_revoke)(membership=org_a.member, key_id=key.id)
    error, code = await refused(ws_connect, secret=secret)
    assert code == 4401 and error["code"] == "unauthenticated" and "revoked" in error["message"]


async def test_a_plan_without_api_access_closes_4403(organization_factory, api_key_factory, ws_connect):
    free = await database_sync_to_async(organization_factory)(tier="free")
    owner = await database_sync_to_async(lambda: free.memberships.select_related("organization__tier", "user").get())()
    _, secret = await database_sync_to_async(api_key_factory)(owner)
    error, code = await refused(ws_connect, secret=secret)
    assert code == 4403
    assert error["code"] == "permission_denied" and "API access" in error["message"]


async def test_a_session_needs_an_allowed_origin_else_4401(org_a, ws_connect):
    for origin in (b"https://evil.example", b""):
        headers = await database_sync_to_async(_session_headers)(org_a.member, origin)
        error, code = await refused(ws_connect, headers=headers)
        assert code == 4401 and error["code"] == "unauthenticated"


# --- before every turn -------------------------------------------------------------------------


async def test_a_key_revoked_while_the_socket_is_open_refuses_the_next_turn(org_a, api_key_factory, ws_connect, caplog):
    key, secret = await database_sync_to_async(api_key_factory)(org_a.member)
    client = await ws_connect(secret=secret)
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}
    before = await _rows()

    await database_sync_to_async(api_key_revoke)(membership=org_a.member, key_id=key.id)
    caplog.set_level(logging.ERROR)
    client_id = await client.send_message("/echo after the revocation")
    error = await client.receive()
    assert error["type"] == "error" and error["code"] == "unauthenticated"
    assert error["client_id"] == client_id and "revoked" in error["message"]
    assert await closed_with(client) == 4401
    assert await _rows() == before  # no reservation, no ledger row, no message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await wait_idle()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "conversation.subscribe", "conversation": "00000000-0000-0000-0000-000000000001"},
        {"type": "generation.stop", "message": "00000000-0000-0000-0000-000000000001"},
        {"type": "message.regenerate", "conversation": "00000000-0000-0000-0000-000000000001",
         "client_id": "00000000-0000-0000-0000-000000000002"},
        {"type": "message.edit", "message": "00000000-0000-0000-0000-000000000001", "content": "x",
         "client_id": "00000000-0000-0000-0000-000000000002"},
    ],
    ids=lambda frame: frame["type"],
)
async def test_a_revoked_key_is_refused_on_every_turn_frame_and_subscribe_and_stop(
    frame, org_a, api_key_factory, ws_connect
):
    key, secret = await database_sync_to_async(api_key_factory)(org_a.member)
    client = await ws_connect(secret=secret)
    await database_sync_to_async(api_key_revoke)(membership=org_a.member, key_id=key.id)
    await client.send(frame)
    error = await client.receive()
    assert error["code"] == "unauthenticated", error  # not the not_found of the unknown ids
    assert await closed_with(client) == 4401


async def test_a_removed_member_with_a_key_is_refused_cleanly(org_a, api_key_factory, ws_connect, caplog):
    _, secret = await database_sync_to_async(api_key_factory)(org_a.member)
    client = await ws_connect(secret=secret)
    await client.send_message("/echo before")
    await client.until_finished()
    await wait_idle()

    await database_sync_to_async(membership_remove)(membership=org_a.owner, target_id=org_a.member.id)
    before = await _rows()  # (the removal itself deletes the member's spend counters and reservations)
    caplog.set_level(logging.ERROR)
    client_id = await client.send_message("/echo after the removal")
    error = await client.receive()
    assert error["code"] == "permission_denied" and error["client_id"] == client_id, error
    assert "no longer a member" in error["message"]
    assert await closed_with(client) == 4403
    assert await _rows() == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_removed_member_with_a_session_is_refused_cleanly(org_a, ws_connect, caplog):
    headers = await database_sync_to_async(_session_headers)(org_a.member)
    client = await ws_connect(headers=headers)
    await client.send_message("/echo before")
    frames = await client.until_finished()
    assert frames[-1]["message"]["content"] == "before"
    await wait_idle()

    await database_sync_to_async(membership_remove)(membership=org_a.owner, target_id=org_a.member.id)
    before = await _rows()  # (the removal itself deletes the member's spend counters and reservations)
    caplog.set_level(logging.ERROR)
    client_id = await client.send_message("/echo after the removal", conversation=frames[0]["conversation"]["id"])
    error = await client.receive()
    assert error["code"] == "permission_denied" and error["client_id"] == client_id, error
    assert error["code"] != "internal_error"
    assert await closed_with(client) == 4403
    assert await _rows() == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_changed_plan_applies_to_the_next_turn(org_a, member_secret, ws_connect, tier_factory):
    client = await ws_connect(secret=await member_secret(org_a.member))
    await client.send_message("/echo a long enough message")
    assert (await client.until_finished())[-1]["message"]["content"] == "a long enough message"
    await wait_idle()

    await database_sync_to_async(tier_factory)("pro", max_message_chars=20)
    client_id = await client.send_message("/echo a long enough message")
    error = await client.receive()
    assert error["code"] == "message_too_long" and error["client_id"] == client_id
    await client.send({"type": "ping"})  # a refusal of the turn, not of the socket
    assert await client.receive() == {"type": "pong"}


async def test_a_plan_that_loses_api_access_closes_a_key_socket_4403(org_a, member_secret, ws_connect):
    client = await ws_connect(secret=await member_secret(org_a.member))
    before = await _rows()

    def downgrade():
        org_a.organization.tier = Tier.objects.get(slug="free")
        org_a.organization.save()

    await database_sync_to_async(downgrade)()
    client_id = await client.send_message("/echo on the free plan")
    error = await client.receive()
    assert error["code"] == "permission_denied" and error["client_id"] == client_id
    assert await closed_with(client) == 4403
    assert await _rows() == before
