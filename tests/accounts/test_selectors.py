"""Tenant-scoped reads: foreign, missing and malformed ids all look the same."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.errors import NotFound
from accounts.models import ApiKey, Invitation, Membership, Role
from accounts.selectors import (
    api_key_get_for_member,
    invitations_for_organization,
    member_get_in_organization,
    membership_default,
    membership_get,
    memberships_for_user,
    organizations_for_user,
    tenant_get,
)
from accounts.services import api_key_create, invitation_accept, invitation_create


@pytest.mark.django_db
def test_tenant_get_refuses_foreign_missing_and_malformed_ids_alike(org_a, org_b):
    key_a, _ = api_key_create(membership=org_a.member, name="a")
    key_b, _ = api_key_create(membership=org_b.member, name="b")
    assert tenant_get(ApiKey.objects.all(), organization=org_a.organization, object_id=key_a.id) == key_a
    assert tenant_get(ApiKey.objects.all(), organization=org_a.organization.id, object_id=str(key_a.id)) == key_a
    for object_id in (key_b.id, uuid.uuid4(), "not-a-uuid", ""):
        with pytest.raises(NotFound, match="Key gone"):
            tenant_get(ApiKey.objects.all(), organization=org_a.organization, object_id=object_id, message="Key gone")


@pytest.mark.django_db
def test_membership_lookups_never_reveal_foreign_organizations(org_a, org_b):
    assert membership_get(user=org_a.member.user, organization_id=org_a.organization.id) == org_a.member
    for organization_id in (org_b.organization.id, uuid.uuid4(), "garbage"):
        with pytest.raises(NotFound):
            membership_get(user=org_a.member.user, organization_id=organization_id)
    with pytest.raises(NotFound):
        member_get_in_organization(organization=org_a.organization, membership_id=org_b.member.id)
    assert member_get_in_organization(organization=org_a.organization, membership_id=org_a.admin.id) == org_a.admin


@pytest.mark.django_db
def test_user_organizations_and_default(org_a, organization_factory, user_factory):
    user = org_a.member.user
    personal = organization_factory(name="Zed's workspace", owner=user)
    personal.is_personal = True
    personal.save()
    assert [m.organization for m in memberships_for_user(user=user)] == [org_a.organization, personal]
    assert organizations_for_user(user=user) == [personal, org_a.organization]
    assert membership_default(user=user).organization == personal  # personal first
    assert membership_default(user=user_factory()) is None


@pytest.mark.django_db
def test_invitations_for_organization_lists_pending_ones_by_default(org_a, org_b, user_factory):
    pending = invitation_create(membership=org_a.owner, email="pending@example.com", role=Role.MEMBER)
    expired = invitation_create(membership=org_a.owner, email="expired@example.com", role=Role.MEMBER)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    accepted = invitation_create(membership=org_a.owner, email="accepted@example.com", role=Role.MEMBER)
    invitation_accept(user=user_factory(email="accepted@example.com"), token=accepted.token)
    invitation_create(membership=org_b.owner, email="other@example.com", role=Role.MEMBER)

    assert invitations_for_organization(organization=org_a.organization) == [pending]
    everything = invitations_for_organization(organization=org_a.organization, pending_only=False)
    assert {i.email for i in everything} == {"pending@example.com", "expired@example.com", "accepted@example.com"}


@pytest.mark.django_db
def test_api_key_get_for_member(org_a):
    own, _ = api_key_create(membership=org_a.member, name="own")
    admins, _ = api_key_create(membership=org_a.admin, name="admin's")
    assert api_key_get_for_member(membership=org_a.member, key_id=own.id) == own
    with pytest.raises(NotFound):
        api_key_get_for_member(membership=org_a.member, key_id=admins.id)
    assert api_key_get_for_member(membership=org_a.owner, key_id=own.id) == own
    assert Membership.objects.count() == 3
