"""A plan without the `api` feature (the seeded Free tier) refuses API keys everywhere: 403 with a
clear message on the REST API and the OpenAI-compatible endpoint, a refused websocket."""

from __future__ import annotations

import json

import openai
import pytest
from channels.testing import WebsocketCommunicator

from billing.models import Reservation
from tests.api.conftest import bearer

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def free_key(organization_factory, api_key_factory) -> str:
    organization = organization_factory(tier="free")
    assert not organization.tier.has_feature("api")
    _, secret = api_key_factory(organization.memberships.get())
    return secret


def test_rest_api_refuses_a_key_of_a_plan_without_api_access(http, free_key):
    response = http.get("/api/v1/conversations/", headers=bearer(free_key))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "plan does not include API access" in response.json()["error"]["message"]


def test_openai_endpoint_refuses_it_and_reserves_nothing(parley_server, free_key):
    client = openai.OpenAI(base_url=parley_server.url + "/v1", api_key=free_key, max_retries=0, timeout=30)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "permission_denied"
    assert "plan does not include API access" in refused.value.message
    assert not Reservation.objects.exists()


def test_a_pro_key_is_accepted(http, key_a):
    assert http.get("/api/v1/conversations/", headers=bearer(key_a)).status_code == 200


async def test_websocket_refuses_it(free_key):
    from config.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Bearer {free_key}".encode())])
    connected, _ = await communicator.connect()
    # Accepted, told why, then closed with 4403 (docs/protocol.md), not a bare HTTP 403 at the upgrade.
    assert connected
    assert json.loads(await communicator.receive_from())["code"] == "permission_denied"
    assert (await communicator.receive_output())["code"] == 4403
