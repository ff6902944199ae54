"""API keys: created per organization, shown once, stored hashed, revocable, expiring; clear 401s."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from accounts.errors import InvalidInput, NotFound, Unauthenticated
from accounts.models import ApiKey, hash_api_key
from accounts.selectors import api_key_authenticate, api_keys_for_member
from accounts.services import api_key_create, api_key_revoke


class WhoAmI(APIView):
    """A tiny API view: who the key acts as."""

    def get(self, request):
        return Response(
            {
                "user": request.user.email,
                "organization": str(request.membership.organization_id),
                "key": str(request.auth.id),
            }
        )


def _call(secret: str | None):
    factory = APIRequestFactory()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret is not None else {}
    response = WhoAmI.as_view()(factory.get("/whoami", **headers))
    response.render()
    return response


@pytest.mark.django_db
def test_create_stores_only_a_hash_and_the_key_authenticates(org_a):
    key, secret = api_key_create(membership=org_a.member, name="CI")
    assert secret.startswith("pk_") and len(secret) > 40
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.hashed_secret == hash_api_key(secret)
    assert secret not in {stored.prefix, stored.hashed_secret, stored.name}
    assert stored.last_used_at is None

    response = _call(secret)
    assert response.status_code == 200
    assert response.data == {
        "user": org_a.member.user.email,
        "organization": str(org_a.organization.id),
        "key": str(key.id),
    }
    assert ApiKey.objects.get(pk=key.pk).last_used_at is not None


@pytest.mark.django_db
def test_revoked_key_is_a_clear_401(org_a):
    key, secret = api_key_create(membership=org_a.member, name="CI")
    api_key_revoke(membership=org_a.member, key_id=key.id)
    response = _call(secret)
    assert response.status_code == 401
    assert "This API key has been revoked." in response.content.decode()
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_expired_key_is_a_clear_401(org_a):
    key, secret = api_key_create(membership=org_a.member, name="CI", expires_at=timezone.now() + timedelta(days=1))
    assert _call(secret).status_code == 200
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save(update_fields=["expires_at"])  # a save: every process forgets the key it remembered
    response = _call(secret)
    assert response.status_code == 401
    assert "This API key has expired." in response.content.decode()


@pytest.mark.django_db
def test_unknown_key_is_a_clear_401():
    response = _call("pk_not-a-real-key")
    assert response.status_code == 401
    assert "Invalid API key." in response.content.decode()
    # No credentials at all is also 401, not 403.
    assert _call(None).status_code == 401


@pytest.mark.django_db
def test_key_of_a_member_who_left_stops_working(org_a):
    _key, secret = api_key_create(membership=org_a.member, name="CI")
    org_a.member.delete()
    with pytest.raises(Unauthenticated):
        api_key_authenticate(secret=secret)
    assert _call(secret).status_code == 401


@pytest.mark.django_db
def test_create_validates_name_and_expiry(org_a):
    with pytest.raises(InvalidInput):
        api_key_create(membership=org_a.member, name="  ")
    with pytest.raises(InvalidInput, match="future"):
        api_key_create(membership=org_a.member, name="old", expires_at=timezone.now() - timedelta(days=1))


@pytest.mark.django_db
def test_who_sees_and_revokes_which_keys(org_a, org_b):
    member_key, _ = api_key_create(membership=org_a.member, name="member's")
    admin_key, _ = api_key_create(membership=org_a.admin, name="admin's")
    foreign_key, _ = api_key_create(membership=org_b.member, name="foreign")
    assert api_keys_for_member(membership=org_a.member) == [member_key]
    assert set(api_keys_for_member(membership=org_a.owner)) == {member_key, admin_key}
    # A member cannot revoke another's key; a foreign key is not found for anyone.
    with pytest.raises(NotFound):
        api_key_revoke(membership=org_a.member, key_id=admin_key.id)
    with pytest.raises(NotFound):
        api_key_revoke(membership=org_a.owner, key_id=foreign_key.id)
    assert ApiKey.objects.get(pk=foreign_key.pk).revoked_at is None
    # Owners and admins can revoke any key of their organization (e.g. a leaked one).
    api_key_revoke(membership=org_a.owner, key_id=member_key.id)
    assert ApiKey.objects.get(pk=member_key.pk).revoked_at is not None


@pytest.mark.django_db
def test_api_keys_page_shows_the_secret_once(org_a, login):
    client = login(org_a.member)
    response = client.post("/organization/api-keys/", {"name": "Laptop", "expires": "30"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    html = response.content.decode()
    key = ApiKey.objects.get(name="Laptop")
    secret = html.split("data-secret>")[1].split("<")[0]
    assert hash_api_key(secret) == key.hashed_secret
    assert key.expires_at is not None and key.expires_at > timezone.now() + timedelta(days=29)
    # Shown once: the list afterwards shows only the prefix.
    html = client.get("/organization/api-keys/").content.decode()
    assert secret not in html and key.prefix in html and "Laptop" in html

    response = client.post(f"/organization/api-keys/{key.id}/revoke/")
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert "Revoked" in client.get("/organization/api-keys/").content.decode()


@pytest.mark.django_db
def test_api_keys_page_foreign_key_is_404(org_a, org_b, login, assert_foreign_404):
    foreign_key, _ = api_key_create(membership=org_b.member, name="foreign")
    assert_foreign_404(login(org_a.owner).post(f"/organization/api-keys/{foreign_key.id}/revoke/"))
    assert ApiKey.objects.get(pk=foreign_key.pk).revoked_at is None
    assert "foreign" not in login(org_a.owner).get("/organization/api-keys/").content.decode()


@pytest.mark.django_db
def test_a_remembered_key_is_forgotten_when_it_is_revoked_or_its_plan_changes(
    org_a, tier_factory, django_assert_num_queries
):
    key, secret = api_key_create(membership=org_a.member, name="CI")
    assert _call(secret).status_code == 200
    with django_assert_num_queries(0):  # remembered
        assert _call(secret).status_code == 200
    tier_factory("pro", features=["tools"])  # staff take API access out of the plan (a save)
    assert _call(secret).status_code == 403
    tier_factory("pro", features=["tools", "api"])
    assert _call(secret).status_code == 200
    api_key_revoke(membership=org_a.owner, key_id=key.id)
    response = _call(secret)
    assert response.status_code == 401
    assert "This API key has been revoked." in response.content.decode()
