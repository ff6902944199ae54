"""Invitations: created by owners/admins, e-mailed with a link, accepted only by the invited address."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.errors import InvalidInput, NotFound, PermissionDenied
from accounts.models import Invitation, Membership, Role
from accounts.services import invitation_accept, invitation_create, invitation_revoke


def _link_path(body: str) -> str:
    line = next(line for line in body.splitlines() if "/invitations/" in line)
    return line[line.index("/invitations/") :].strip()


@pytest.mark.django_db
def test_admin_invites_by_email_and_the_invited_user_accepts_through_the_link(
    org_a, login, user_factory, django_capture_on_commit_callbacks
):
    client = login(org_a.admin)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post("/organization/invitations/", {"email": "Newcomer@Example.com", "role": "member"})
        assert len(mail.outbox) == 0  # the e-mail waits for the commit
    assert len(callbacks) == 1
    assert response.status_code == 302
    invitation = Invitation.objects.get(organization=org_a.organization)
    assert invitation.email == "newcomer@example.com"
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["newcomer@example.com"]
    assert "Acme" in mail.outbox[0].subject
    path = _link_path(mail.outbox[0].body)
    assert path == f"/invitations/{org_a.organization.id}/{invitation.token}/"

    newcomer = user_factory(email="newcomer@example.com")
    client.logout()
    assert client.get(path).status_code == 302  # log in first
    client.force_login(newcomer)
    page = client.get(path)
    assert page.status_code == 200
    assert "Join Acme" in page.content.decode()
    response = client.post(path)
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    membership = Membership.objects.get(user=newcomer, organization=org_a.organization)
    assert membership.role == Role.MEMBER
    invitation.refresh_from_db()
    assert invitation.accepted_at is not None and invitation.accepted_by == newcomer
    # Accepting also switches the session to the new organization.
    assert "Acme" in client.get("/dashboard/").content.decode()


@pytest.mark.django_db
def test_accept_with_a_verified_secondary_address(org_a, user_factory, verified_email):
    invitation = invitation_create(membership=org_a.owner, email="work@example.com", role=Role.ADMIN)
    user = user_factory(email="home@example.com")
    verified_email(user, "work@example.com", verified=True)
    membership = invitation_accept(user=user, token=invitation.token)
    assert membership.role == Role.ADMIN and membership.organization == org_a.organization


@pytest.mark.django_db
def test_an_unverified_secondary_address_is_not_enough(org_a, user_factory, verified_email):
    invitation = invitation_create(membership=org_a.owner, email="work@example.com", role=Role.MEMBER)
    user = user_factory(email="home@example.com")
    verified_email(user, "work@example.com", verified=False)
    with pytest.raises(PermissionDenied, match="sent to work@example.com"):
        invitation_accept(user=user, token=invitation.token)


@pytest.mark.django_db
def test_wrong_user_is_refused_with_a_clear_message(org_a, login, user_factory):
    invitation = invitation_create(membership=org_a.owner, email="right@example.com", role=Role.MEMBER)
    intruder = user_factory(email="wrong@example.com")
    client = login(intruder)
    path = f"/invitations/{org_a.organization.id}/{invitation.token}/"
    response = client.post(path)
    assert response.status_code == 400
    assert "This invitation was sent to right@example.com" in response.content.decode()
    assert not Membership.objects.filter(user=intruder, organization=org_a.organization).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None


@pytest.mark.django_db
def test_expired_invitation_is_refused(org_a, login, user_factory):
    invitation = invitation_create(membership=org_a.owner, email="late@example.com", role=Role.MEMBER)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    user = user_factory(email="late@example.com")
    with pytest.raises(InvalidInput, match="expired"):
        invitation_accept(user=user, token=invitation.token)
    client = login(user)
    path = f"/invitations/{org_a.organization.id}/{invitation.token}/"
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 400
        assert "This invitation has expired" in response.content.decode()
    assert not Membership.objects.filter(user=user, organization=org_a.organization).exists()


@pytest.mark.django_db
def test_already_accepted_invitation_is_refused(org_a, user_factory, login):
    invitation = invitation_create(membership=org_a.owner, email="twice@example.com", role=Role.MEMBER)
    user = user_factory(email="twice@example.com")
    invitation_accept(user=user, token=invitation.token)
    with pytest.raises(InvalidInput, match="already been accepted"):
        invitation_accept(user=user, token=invitation.token)
    response = login(user).post(f"/invitations/{org_a.organization.id}/{invitation.token}/")
    assert response.status_code == 400
    assert "already been accepted" in response.content.decode()
    assert Membership.objects.filter(user=user, organization=org_a.organization).count() == 1


@pytest.mark.django_db
def test_token_of_organization_a_cannot_join_organization_b(org_a, org_b, user_factory, login):
    invitation = invitation_create(membership=org_a.owner, email="hopper@example.com", role=Role.MEMBER)
    user = user_factory(email="hopper@example.com")
    with pytest.raises(InvalidInput, match="different organization"):
        invitation_accept(user=user, token=invitation.token, organization_id=org_b.organization.id)
    response = login(user).post(f"/invitations/{org_b.organization.id}/{invitation.token}/")
    assert response.status_code == 400
    assert "This invitation is for a different organization." in response.content.decode()
    assert not Membership.objects.filter(user=user).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None


@pytest.mark.django_db
def test_unknown_token_is_refused(org_a, user_factory, login):
    user = user_factory()
    with pytest.raises(NotFound):
        invitation_accept(user=user, token="no-such-token")
    response = login(user).post(f"/invitations/{org_a.organization.id}/no-such-token/")
    assert response.status_code == 400
    assert "not valid" in response.content.decode()


@pytest.mark.django_db
def test_member_cannot_invite(org_a, login):
    with pytest.raises(PermissionDenied):
        invitation_create(membership=org_a.member, email="x@example.com", role=Role.MEMBER)
    response = login(org_a.member).post("/organization/invitations/", {"email": "x@example.com", "role": "member"})
    assert response.status_code == 302
    assert not Invitation.objects.exists()


@pytest.mark.django_db
def test_admin_cannot_invite_an_owner_but_an_owner_can(org_a):
    with pytest.raises(PermissionDenied):
        invitation_create(membership=org_a.admin, email="boss@example.com", role=Role.OWNER)
    invitation = invitation_create(membership=org_a.owner, email="boss@example.com", role=Role.OWNER)
    assert invitation.role == Role.OWNER


@pytest.mark.django_db
def test_invitation_input_is_validated(org_a):
    with pytest.raises(InvalidInput, match="valid e-mail"):
        invitation_create(membership=org_a.owner, email="not-an-email", role=Role.MEMBER)
    with pytest.raises(InvalidInput, match="Unknown role"):
        invitation_create(membership=org_a.owner, email="ok@example.com", role="emperor")
    with pytest.raises(InvalidInput, match="already a member"):
        invitation_create(membership=org_a.owner, email=org_a.member.user.email.upper(), role=Role.MEMBER)


@pytest.mark.django_db
def test_reinviting_replaces_the_pending_invitation(org_a):
    first = invitation_create(membership=org_a.owner, email="again@example.com", role=Role.MEMBER)
    second = invitation_create(membership=org_a.owner, email="again@example.com", role=Role.ADMIN)
    assert list(Invitation.objects.filter(email="again@example.com")) == [second]
    assert first.token != second.token


@pytest.mark.django_db
def test_revoke_invitation_and_foreign_invitation_is_404(org_a, org_b, login, assert_foreign_404):
    invitation = invitation_create(membership=org_a.owner, email="gone@example.com", role=Role.MEMBER)
    with pytest.raises(NotFound):
        invitation_revoke(membership=org_b.owner, invitation_id=invitation.id)
    assert_foreign_404(login(org_b.owner).post(f"/organization/invitations/{invitation.id}/revoke/"))
    with pytest.raises(PermissionDenied):
        invitation_revoke(membership=org_a.member, invitation_id=invitation.id)
    invitation_revoke(membership=org_a.admin, invitation_id=invitation.id)
    assert not Invitation.objects.filter(pk=invitation.pk).exists()


@pytest.mark.django_db
def test_a_new_person_signs_up_from_the_invitation_link_and_joins(client, org_a, password):
    invitation = invitation_create(membership=org_a.owner, email="fresh@example.com", role=Role.MEMBER)
    path = f"/invitations/{org_a.organization.id}/{invitation.token}/"
    response = client.get(path)
    assert response.status_code == 302
    login_url = response["Location"]
    assert login_url.startswith("/accounts/login/") and "next=" in login_url
    login_page = client.get(login_url).content.decode()
    assert "/accounts/signup/?next=" in login_page
    response = client.post(
        "/accounts/signup/",
        {"email": "fresh@example.com", "password1": password, "password2": password, "next": path},
    )
    assert response.status_code == 302 and response["Location"] == path
    assert client.post(path).status_code == 302
    assert Membership.objects.filter(user__email="fresh@example.com", organization=org_a.organization).exists()
    # Their personal workspace exists too.
    assert Membership.objects.filter(user__email="fresh@example.com", organization__is_personal=True).exists()
