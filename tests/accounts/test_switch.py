"""The current organization: chosen per browser session, never one the user does not belong to."""

import pytest

from accounts.errors import NotFound
from accounts.middleware import SESSION_KEY
from accounts.services import organization_switch


@pytest.mark.django_db
def test_switch_between_own_organizations(org_a, organization_factory, login):
    second = organization_factory(name="Side project", owner=org_a.member.user)
    client = login(org_a.member)
    assert "Acme" in client.get("/dashboard/").content.decode()
    response = client.post("/organizations/switch/", {"organization_id": str(second.id), "next": "/organization/"})
    assert response.status_code == 302
    assert response["Location"] == "/organization/"
    assert client.session[SESSION_KEY] == str(second.id)
    html = client.get("/dashboard/").content.decode()
    assert "You are working in <strong>Side project</strong>" in html
    # The switcher lists both organizations.
    assert "Acme" in html and "Side project" in html


@pytest.mark.django_db
def test_switch_to_a_foreign_organization_is_404_and_leaves_the_session(org_a, org_b, login, assert_foreign_404):
    client = login(org_a.member)
    before = client.session[SESSION_KEY]
    assert_foreign_404(client.post("/organizations/switch/", {"organization_id": str(org_b.organization.id)}))
    assert client.session[SESSION_KEY] == before
    assert_foreign_404(client.post("/organizations/switch/", {"organization_id": "not-a-uuid"}))
    assert client.session[SESSION_KEY] == before
    assert "Globex" not in client.get("/dashboard/").content.decode()


@pytest.mark.django_db
def test_switch_service_refuses_foreign_organization(org_a, org_b, client):
    session = client.session
    with pytest.raises(NotFound):
        organization_switch(request_or_session=session, user=org_a.owner.user, organization_id=org_b.organization.id)
    assert SESSION_KEY not in session
    membership = organization_switch(
        request_or_session=session, user=org_a.owner.user, organization_id=org_a.organization.id
    )
    assert session[SESSION_KEY] == str(org_a.organization.id) and membership == org_a.owner


@pytest.mark.django_db
def test_a_stale_or_forged_session_choice_falls_back_to_an_own_organization(org_a, org_b, login):
    client = login(org_a.member)
    session = client.session
    session[SESSION_KEY] = str(org_b.organization.id)  # e.g. removed from B since, or tampered
    session.save()
    html = client.get("/organization/").content.decode()
    assert "Acme" in html and "Globex" not in html
    assert client.session.get(SESSION_KEY) != str(org_b.organization.id)


@pytest.mark.django_db
def test_removed_member_loses_the_organization_at_the_next_request(org_a, organization_factory, login):
    own = organization_factory(name="Own", owner=org_a.member.user)
    client = login(org_a.member)
    assert "Acme" in client.get("/dashboard/").content.decode()
    org_a.member.delete()
    html = client.get("/dashboard/").content.decode()
    assert "You are working in <strong>Own</strong>" in html
    assert own.name in html


@pytest.mark.django_db
def test_switch_requires_post_and_login(client, org_a):
    assert client.post("/organizations/switch/", {"organization_id": str(org_a.organization.id)}).status_code == 302
    client.force_login(org_a.owner.user)
    assert client.get("/organizations/switch/").status_code == 405


@pytest.mark.django_db
def test_create_team_organization_and_switch_to_it(org_a, login):
    from accounts.models import Membership, Role

    client = login(org_a.member)
    response = client.post("/organizations/new/", {"name": "Research Team"})
    assert response.status_code == 302
    membership = Membership.objects.get(user=org_a.member.user, organization__name="Research Team")
    assert membership.role == Role.OWNER and not membership.organization.is_personal
    assert membership.organization.tier.slug == "free"
    assert client.session[SESSION_KEY] == str(membership.organization_id)
    response = client.post("/organizations/new/", {"name": "   "})
    assert response.status_code == 200
    assert "cannot be empty" in response.content.decode()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
async def test_membership_is_resolved_in_the_async_stack_too(org_a, org_b):
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    client = AsyncClient()
    await sync_to_async(client.force_login)(org_a.member.user)
    response = await client.get("/dashboard/")
    assert response.status_code == 200
    assert "Acme" in response.content.decode()
    response = await client.post("/organizations/switch/", {"organization_id": str(org_b.organization.id)})
    assert response.status_code == 404
