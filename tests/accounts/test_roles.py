"""Role rules of members: who may change whom, and an organization always keeps an owner."""

import pytest

from accounts.errors import InvalidInput, NotFound, PermissionDenied
from accounts.models import ApiKey, Membership, Role
from accounts.services import membership_change_role, membership_remove, organization_rename


def _role(membership) -> str:
    return Membership.objects.get(pk=membership.pk).role


@pytest.mark.django_db
def test_owner_changes_roles(org_a):
    membership_change_role(membership=org_a.owner, target_id=org_a.member.id, role=Role.ADMIN)
    assert _role(org_a.member) == Role.ADMIN
    membership_change_role(membership=org_a.owner, target_id=org_a.admin.id, role=Role.OWNER)
    assert _role(org_a.admin) == Role.OWNER


@pytest.mark.django_db
def test_member_cannot_change_roles_or_remove_or_rename(org_a):
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=org_a.member, target_id=org_a.admin.id, role=Role.MEMBER)
    with pytest.raises(PermissionDenied):
        membership_remove(membership=org_a.member, target_id=org_a.admin.id)
    with pytest.raises(PermissionDenied):
        organization_rename(membership=org_a.member, name="Mine now")


@pytest.mark.django_db
def test_admin_cannot_touch_or_promote_to_owner(org_a, member_factory):
    with pytest.raises(PermissionDenied):
        membership_remove(membership=org_a.admin, target_id=org_a.owner.id)
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=org_a.admin, target_id=org_a.owner.id, role=Role.MEMBER)
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=org_a.admin, target_id=org_a.member.id, role=Role.OWNER)
    assert _role(org_a.owner) == Role.OWNER and _role(org_a.member) == Role.MEMBER
    # Admins manage members and other admins.
    other_admin = member_factory(org_a.organization, role=Role.ADMIN)
    membership_change_role(membership=org_a.admin, target_id=other_admin.id, role=Role.MEMBER)
    membership_remove(membership=org_a.admin, target_id=org_a.member.id)
    assert not Membership.objects.filter(pk=org_a.member.pk).exists()


@pytest.mark.django_db
def test_last_owner_cannot_be_demoted_or_removed_or_leave(org_a):
    with pytest.raises(PermissionDenied, match="at least one owner"):
        membership_change_role(membership=org_a.owner, target_id=org_a.owner.id, role=Role.ADMIN)
    with pytest.raises(PermissionDenied, match="at least one owner"):
        membership_remove(membership=org_a.owner, target_id=org_a.owner.id)
    assert _role(org_a.owner) == Role.OWNER


@pytest.mark.django_db
def test_an_owner_can_step_down_when_another_owner_exists(org_a):
    membership_change_role(membership=org_a.owner, target_id=org_a.admin.id, role=Role.OWNER)
    membership_change_role(membership=org_a.owner, target_id=org_a.owner.id, role=Role.MEMBER)
    assert _role(org_a.owner) == Role.MEMBER
    # The remaining owner is now the last one.
    with pytest.raises(PermissionDenied):
        membership_remove(membership=org_a.admin, target_id=org_a.admin.id)


@pytest.mark.django_db
def test_member_can_leave_and_their_keys_are_revoked(org_a, api_key_factory):
    key, _secret = api_key_factory(org_a.member)
    membership_remove(membership=org_a.member, target_id=org_a.member.id)
    assert not Membership.objects.filter(pk=org_a.member.pk).exists()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None


@pytest.mark.django_db
def test_foreign_member_ids_are_not_found(org_a, org_b):
    with pytest.raises(NotFound):
        membership_change_role(membership=org_a.owner, target_id=org_b.member.id, role=Role.ADMIN)
    with pytest.raises(NotFound):
        membership_remove(membership=org_a.owner, target_id=org_b.member.id)
    with pytest.raises(NotFound):
        membership_remove(membership=org_a.owner, target_id="not-a-uuid")
    assert _role(org_b.member) == Role.MEMBER


@pytest.mark.django_db
def test_unknown_role_is_invalid(org_a):
    with pytest.raises(InvalidInput):
        membership_change_role(membership=org_a.owner, target_id=org_a.member.id, role="king")


@pytest.mark.django_db
def test_rename(org_a):
    organization_rename(membership=org_a.admin, name="  Acme   Labs ")
    org_a.organization.refresh_from_db()
    assert org_a.organization.name == "Acme Labs"
    with pytest.raises(InvalidInput):
        organization_rename(membership=org_a.owner, name="   ")


# --- the same rules through the settings page ----------------------------------------------


@pytest.mark.django_db
def test_settings_page_role_change_and_removal(org_a, login):
    client = login(org_a.owner)
    page = client.get("/organization/")
    assert page.status_code == 200
    html = page.content.decode()
    assert org_a.member.user.email in html and "Invite people" in html
    response = client.post(f"/organization/members/{org_a.member.id}/role/", {"role": "admin"})
    assert response.status_code == 302
    assert _role(org_a.member) == Role.ADMIN
    response = client.post(f"/organization/members/{org_a.member.id}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=org_a.member.pk).exists()


@pytest.mark.django_db
def test_settings_page_refusals_show_a_message(org_a, login):
    client = login(org_a.admin)
    response = client.post(f"/organization/members/{org_a.owner.id}/remove/", follow=True)
    assert "Only owners can remove an owner." in response.content.decode()
    assert Membership.objects.filter(pk=org_a.owner.pk).exists()

    client = login(org_a.owner)
    response = client.post(f"/organization/members/{org_a.owner.id}/role/", {"role": "member"}, follow=True)
    assert "at least one owner" in response.content.decode()


@pytest.mark.django_db
def test_member_sees_members_but_no_management(org_a, login):
    html = login(org_a.member).get("/organization/").content.decode()
    assert org_a.owner.user.email in html
    assert "Invite people" not in html
    assert "/role/" not in html


@pytest.mark.django_db
def test_foreign_member_on_the_settings_page_is_404(org_a, org_b, login, assert_foreign_404):
    client = login(org_a.owner)
    assert_foreign_404(client.post(f"/organization/members/{org_b.member.id}/role/", {"role": "admin"}))
    assert_foreign_404(client.post(f"/organization/members/{org_b.member.id}/remove/"))
    assert _role(org_b.member) == Role.MEMBER


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(org_a):
    import threading

    from django.db import connection

    membership_change_role(membership=org_a.owner, target_id=org_a.admin.id, role=Role.OWNER)
    first = Membership.objects.select_related("organization", "user").get(pk=org_a.owner.pk)
    second = Membership.objects.select_related("organization", "user").get(pk=org_a.admin.pk)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(actor, target):
        try:
            barrier.wait(timeout=10)
            membership_change_role(membership=actor, target_id=target.id, role=Role.MEMBER)
            outcomes.append("demoted")
        except PermissionDenied:
            outcomes.append("refused")
        except Exception as error:  # a deadlock or anything else fails the test below
            outcomes.append(f"error: {error!r}")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(first, second)),
        threading.Thread(target=demote, args=(second, first)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["demoted", "refused"]
    assert Membership.objects.filter(organization=org_a.organization, role=Role.OWNER).count() == 1
