"""Audit events of the accounts services and of authentication (log-in, password, MFA).

Each change writes exactly one event in its transaction, naming the actor (from the bound context:
session user, API key), the organization, the target and the fields before and after; a refused
change writes none. Authentication events go to the platform chain with the request's IP address
and user agent. Secrets (API key secrets and hashes, passwords) never appear in any event.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import (
    SECRET_SESSION_KEY,
    format_hotp_value,
    hotp_value,
    yield_hotp_counters_from_time,
)
from django.core import mail, serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client
from django.utils import timezone

from accounts.audit import audit_actor
from accounts.errors import InvalidInput, NotFound, PermissionDenied
from accounts.models import ActorType, ApiKey, AuditEvent, Invitation, Membership, Role, User, hash_api_key
from accounts.services import (
    api_key_create,
    api_key_revoke,
    invitation_accept,
    invitation_create,
    invitation_revoke,
    membership_change_role,
    membership_remove,
    organization_create,
    organization_rename,
)

IP = "203.0.113.7"
UA = "Mozilla/5.0 (audit-test) Parley/12"


def _events(action: str, **filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("created_at", "sequence"))


def _one(action: str, **filters) -> AuditEvent:
    events = _events(action, **filters)
    assert len(events) == 1, f"expected exactly one {action} event, got {len(events)}"
    return events[0]


def _all_rows_text() -> str:
    return serializers.serialize("json", AuditEvent.objects.all())


def _assert_user_actor(event: AuditEvent, user: User) -> None:
    assert event.actor_type == ActorType.USER
    assert event.actor_user_id == user.pk
    assert event.actor_api_key_id is None
    assert event.actor_label == user.email


def _as(membership_or_user):
    """Act as this user from a known address, as the request middleware binds it."""
    user = getattr(membership_or_user, "user", membership_or_user)
    return audit_actor(user=user, ip_address=IP, user_agent=UA)


def _fresh(membership: Membership) -> Membership:
    return Membership.objects.select_related("organization__tier", "user").get(pk=membership.pk)


# --- Organizations ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_organization_create_records_the_organization_and_who_created_it(user_factory):
    owner = user_factory(email="founder@example.com")
    with _as(owner):
        organization = organization_create(name="  Initech  ", owner=owner)
    event = _one("organization.create", organization=organization)
    _assert_user_actor(event, owner)
    assert (event.target_type, event.target_id, event.target_label) == ("organization", str(organization.pk), "Initech")
    assert event.changes == {
        "name": [None, "Initech"],
        "slug": [None, organization.slug],
        "tier": [None, "free"],
        "is_personal": [None, False],
        "owner": [None, "founder@example.com"],
    }
    assert (event.ip_address, event.user_agent) == (IP, UA)


@pytest.mark.django_db
def test_a_bad_organization_name_creates_nothing_and_records_nothing(user_factory):
    owner = user_factory()
    with pytest.raises(InvalidInput):
        organization_create(name="   ", owner=owner)
    assert _events("organization.create") == []


@pytest.mark.django_db
def test_signup_records_the_personal_organization_with_the_new_user_as_actor(client, password):
    response = client.post(
        "/accounts/signup/",
        {"email": "ada@example.com", "password1": password, "password2": password},
        REMOTE_ADDR=IP,
        HTTP_USER_AGENT=UA,
    )
    assert response.status_code == 302
    user = User.objects.get(email="ada@example.com")
    organization = Membership.objects.get(user=user).organization
    event = _one("organization.create", organization=organization)
    _assert_user_actor(event, user)
    assert event.changes["is_personal"] == [None, True]
    assert (event.ip_address, event.user_agent) == (IP, UA)
    assert password not in _all_rows_text()


@pytest.mark.django_db
def test_rename_records_the_name_before_and_after(org_a):
    with _as(org_a.admin):
        organization_rename(membership=org_a.admin, name="Acme Corp")
    event = _one("organization.rename")
    _assert_user_actor(event, org_a.admin.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id) == ("organization", str(org_a.organization.pk))
    assert event.changes == {"name": ["Acme", "Acme Corp"]}
    assert (event.ip_address, event.user_agent) == (IP, UA)


@pytest.mark.django_db
def test_a_refused_or_empty_rename_records_nothing(org_a):
    with pytest.raises(InvalidInput):
        organization_rename(membership=org_a.owner, name="x" * 151)
    with pytest.raises(PermissionDenied):
        organization_rename(membership=org_a.member, name="Taken over")
    organization_rename(membership=org_a.owner, name="Acme")  # the same name: nothing changed
    assert _events("organization.rename") == []


# --- Invitations ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_invite_records_the_invitation_with_email_and_role(org_a):
    with _as(org_a.owner):
        invitation = invitation_create(membership=org_a.owner, email="New@Example.com", role=Role.ADMIN)
    event = _one("membership.invite")
    _assert_user_actor(event, org_a.owner.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id, event.target_label) == (
        "invitation",
        str(invitation.pk),
        "new@example.com",
    )
    assert event.changes == {"email": [None, "new@example.com"], "role": [None, "admin"]}
    assert invitation.token not in _all_rows_text()


@pytest.mark.django_db
def test_a_new_invitation_for_the_same_address_is_one_more_event(org_a):
    first = invitation_create(membership=org_a.owner, email="new@example.com")
    second = invitation_create(membership=org_a.owner, email="new@example.com", role=Role.ADMIN)
    assert not Invitation.objects.filter(pk=first.pk).exists()  # replaced
    assert [event.target_id for event in _events("membership.invite")] == [str(first.pk), str(second.pk)]


@pytest.mark.django_db
def test_a_refused_invitation_records_nothing(org_a):
    with pytest.raises(InvalidInput):
        invitation_create(membership=org_a.owner, email="not an address")
    with pytest.raises(PermissionDenied):
        invitation_create(membership=org_a.member, email="friend@example.com")
    with pytest.raises(PermissionDenied):
        invitation_create(membership=org_a.admin, email="boss@example.com", role=Role.OWNER)
    with pytest.raises(InvalidInput):
        invitation_create(membership=org_a.owner, email=org_a.member.user.email)
    assert _events("membership.invite") == []


@pytest.mark.django_db
def test_revoke_invitation_records_what_was_revoked(org_a):
    invitation = invitation_create(membership=org_a.owner, email="new@example.com")
    with _as(org_a.admin):
        invitation_revoke(membership=org_a.admin, invitation_id=invitation.id)
    event = _one("invitation.revoke")
    _assert_user_actor(event, org_a.admin.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id, event.target_label) == (
        "invitation",
        str(invitation.pk),
        "new@example.com",
    )
    assert event.changes == {"email": ["new@example.com", None], "role": ["member", None]}


@pytest.mark.django_db
def test_a_refused_invitation_revoke_records_nothing(org_a, org_b):
    invitation = invitation_create(membership=org_a.owner, email="new@example.com", role=Role.OWNER)
    with pytest.raises(PermissionDenied):
        invitation_revoke(membership=org_a.member, invitation_id=invitation.id)
    with pytest.raises(PermissionDenied):
        invitation_revoke(membership=org_a.admin, invitation_id=invitation.id)  # an owner's invitation
    with pytest.raises(NotFound):
        invitation_revoke(membership=org_b.owner, invitation_id=invitation.id)  # another tenant's
    assert _events("invitation.revoke") == []


@pytest.mark.django_db
def test_accept_records_the_join_with_the_accepting_user_as_actor(org_a, user_factory):
    invitation = invitation_create(membership=org_a.owner, email="new@example.com", role=Role.ADMIN)
    newcomer = user_factory(email="new@example.com")
    with _as(org_a.owner):  # whatever the context says, the one joining is the actor
        membership = invitation_accept(user=newcomer, token=invitation.token, organization_id=org_a.organization.id)
    event = _one("membership.join")
    _assert_user_actor(event, newcomer)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id, event.target_label) == (
        "membership",
        str(membership.pk),
        "new@example.com",
    )
    assert event.changes == {"role": [None, "admin"], "invitation": [None, str(invitation.pk)]}
    assert invitation.token not in _all_rows_text()


@pytest.mark.django_db
def test_a_refused_accept_records_nothing(org_a, org_b, user_factory):
    invitation = invitation_create(membership=org_a.owner, email="new@example.com")
    with pytest.raises(PermissionDenied):
        invitation_accept(user=user_factory(email="someone-else@example.com"), token=invitation.token)
    newcomer = user_factory(email="new@example.com")
    with pytest.raises(InvalidInput):
        invitation_accept(user=newcomer, token=invitation.token, organization_id=org_b.organization.id)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(InvalidInput):
        invitation_accept(user=newcomer, token=invitation.token)
    assert _events("membership.join") == []


# --- Members ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_role_change_records_the_role_before_and_after(org_a):
    with _as(org_a.owner):
        changed = membership_change_role(membership=org_a.owner, target_id=org_a.member.id, role=Role.ADMIN)
    event = _one("membership.role_change")
    _assert_user_actor(event, org_a.owner.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id, event.target_label) == (
        "membership",
        str(changed.pk),
        org_a.member.user.email,
    )
    assert event.changes == {"role": ["member", "admin"]}


@pytest.mark.django_db
def test_a_refused_or_no_op_role_change_records_nothing(org_a, org_b):
    with pytest.raises(PermissionDenied):  # the last owner cannot be demoted
        membership_change_role(membership=org_a.owner, target_id=org_a.owner.id, role=Role.MEMBER)
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=org_a.member, target_id=org_a.admin.id, role=Role.MEMBER)
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=org_a.admin, target_id=org_a.member.id, role=Role.OWNER)
    with pytest.raises(InvalidInput):
        membership_change_role(membership=org_a.owner, target_id=org_a.member.id, role="emperor")
    with pytest.raises(NotFound):
        membership_change_role(membership=org_b.owner, target_id=org_a.member.id, role=Role.ADMIN)
    membership_change_role(membership=org_a.owner, target_id=org_a.member.id, role=Role.MEMBER)  # no-op
    assert _events("membership.role_change") == []


@pytest.mark.django_db
def test_remove_records_the_member_and_the_keys_it_revoked(org_a, api_key_factory):
    api_key_factory(org_a.member, name="one")
    api_key_factory(org_a.member, name="two")
    with _as(org_a.admin):
        membership_remove(membership=org_a.admin, target_id=org_a.member.id)
    event = _one("membership.remove")
    _assert_user_actor(event, org_a.admin.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id, event.target_label) == (
        "membership",
        str(org_a.member.pk),
        org_a.member.user.email,
    )
    assert event.changes == {"role": ["member", None], "api_keys_revoked": [0, 2]}
    assert ApiKey.objects.filter(user=org_a.member.user, revoked_at__isnull=True).count() == 0


@pytest.mark.django_db
def test_leaving_through_the_page_names_the_member_as_actor(org_a, login):
    client = login(org_a.member)
    response = client.post(f"/organization/members/{org_a.member.id}/remove/", REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    assert response.status_code == 302
    event = _one("membership.remove")
    _assert_user_actor(event, org_a.member.user)
    assert event.target_id == str(org_a.member.pk)
    assert event.changes == {"role": ["member", None], "api_keys_revoked": [0, 0]}
    assert (event.ip_address, event.user_agent) == (IP, UA)


@pytest.mark.django_db
def test_a_refused_removal_records_nothing(org_a, org_b):
    with pytest.raises(PermissionDenied):  # the last owner cannot leave
        membership_remove(membership=org_a.owner, target_id=org_a.owner.id)
    with pytest.raises(PermissionDenied):
        membership_remove(membership=org_a.member, target_id=org_a.admin.id)
    with pytest.raises(PermissionDenied):
        membership_remove(membership=org_a.admin, target_id=org_a.owner.id)
    with pytest.raises(NotFound):
        membership_remove(membership=org_b.owner, target_id=org_a.member.id)
    assert _events("membership.remove") == []


# --- API keys ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_key_create_records_name_prefix_and_expiry_never_the_secret(org_a):
    expires_at = timezone.now() + timedelta(days=30)
    with _as(org_a.member):
        key, secret = api_key_create(membership=org_a.member, name="CI", expires_at=expires_at)
    event = _one("api_key.create")
    _assert_user_actor(event, org_a.member.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id, event.target_label) == ("apikey", str(key.pk), f"CI ({key.prefix}…)")
    assert set(event.changes) == {"name", "prefix", "expires_at"}
    assert event.changes["name"] == [None, "CI"]
    assert event.changes["prefix"] == [None, key.prefix]
    assert event.changes["expires_at"][0] is None
    assert event.changes["expires_at"][1].startswith(expires_at.date().isoformat())
    rows = _all_rows_text()
    assert secret not in rows and hash_api_key(secret) not in rows
    assert secret[10:30] not in rows  # no piece of the secret beyond its public prefix either


@pytest.mark.django_db
def test_a_refused_api_key_create_records_nothing(org_a):
    with pytest.raises(InvalidInput):
        api_key_create(membership=org_a.member, name="   ")
    with pytest.raises(InvalidInput):
        api_key_create(membership=org_a.member, name="old", expires_at=timezone.now() - timedelta(days=1))
    assert _events("api_key.create") == []
    assert not ApiKey.objects.filter(organization=org_a.organization).exists()


@pytest.mark.django_db
def test_api_key_create_and_its_event_commit_together(org_a, monkeypatch):
    """A failing event write undoes the key: the service is one transaction."""
    import accounts.services

    def broken(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(accounts.services, "audit_record", broken)
    with pytest.raises(RuntimeError):
        api_key_create(membership=org_a.member, name="CI")
    assert not ApiKey.objects.filter(organization=org_a.organization).exists()


@pytest.mark.django_db
def test_api_key_revoke_records_once(org_a, api_key_factory):
    key, _ = api_key_factory(org_a.member, name="CI")
    with _as(org_a.owner):
        api_key_revoke(membership=org_a.owner, key_id=key.id)
        api_key_revoke(membership=org_a.owner, key_id=key.id)  # already revoked: nothing changes
    event = _one("api_key.revoke")
    _assert_user_actor(event, org_a.owner.user)
    assert event.organization_id == org_a.organization.pk
    assert (event.target_type, event.target_id) == ("apikey", str(key.pk))
    key.refresh_from_db()
    assert event.changes == {"revoked_at": [None, json.loads(json.dumps(key.revoked_at, cls=DjangoJSONEncoder))]}


@pytest.mark.django_db
def test_a_member_revoking_someone_elses_key_records_nothing(org_a, org_b, api_key_factory):
    key, _ = api_key_factory(org_a.admin, name="admin's")
    with pytest.raises(NotFound):
        api_key_revoke(membership=org_a.member, key_id=key.id)
    with pytest.raises(NotFound):
        api_key_revoke(membership=org_b.owner, key_id=key.id)
    assert _events("api_key.revoke") == []
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


# --- Interfaces: the REST API with a key, the pages with a session ---------------------------------


@pytest.mark.django_db
def test_rest_api_calls_record_the_api_key_as_actor(org_a, api_key_factory):
    acting_key, acting_secret = api_key_factory(org_a.owner, name="automation")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {acting_secret}", REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)

    created = api.post("/api/v1/api-keys/", {"name": "deploy"}, content_type="application/json")
    assert created.status_code == 201, created.content
    new_secret = created.json()["secret"]
    changed = api.patch(
        f"/api/v1/organization/members/{org_a.member.id}/", {"role": "admin"}, content_type="application/json"
    )
    assert changed.status_code == 200, changed.content

    for action in ("api_key.create", "membership.role_change"):
        event = _events(action, organization=org_a.organization)[-1]
        assert event.actor_type == ActorType.API_KEY
        assert event.actor_api_key_id == acting_key.pk
        assert event.actor_user_id == org_a.owner.user.pk
        assert event.actor_label == f"automation ({acting_key.prefix}…)"
        assert (event.ip_address, event.user_agent) == (IP, UA)
    assert _events("membership.role_change")[-1].changes == {"role": ["member", "admin"]}
    rows = _all_rows_text()
    for secret in (acting_secret, new_secret):
        assert secret not in rows and hash_api_key(secret) not in rows


@pytest.mark.django_db
def test_pages_record_the_session_user_with_address_and_user_agent(org_a, login):
    client = login(org_a.owner)
    response = client.post("/organization/rename/", {"name": "Acme Industries"}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    assert response.status_code == 302
    created = client.post("/organization/api-keys/", {"name": "laptop"}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    assert created.status_code == 200
    secret = created.context["created_secret"]
    for action in ("organization.rename", "api_key.create"):
        event = _one(action, organization=org_a.organization)
        _assert_user_actor(event, org_a.owner.user)
        assert (event.ip_address, event.user_agent) == (IP, UA)
    rows = _all_rows_text()
    assert secret not in rows and hash_api_key(secret) not in rows


# --- Authentication ---------------------------------------------------------------------------


def _platform(action: str) -> list[AuditEvent]:
    return _events(action, organization__isnull=True)


@pytest.mark.django_db
def test_login_through_allauth_records_the_user_with_address_and_user_agent(client, org_a, password):
    user = org_a.member.user
    response = client.post(
        "/accounts/login/", {"login": user.email, "password": password}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA
    )
    assert response.status_code == 302
    event = _one("auth.login")
    assert event.organization_id is None
    _assert_user_actor(event, user)
    assert (event.target_type, event.target_id, event.target_label) == ("user", str(user.pk), user.email)
    assert (event.ip_address, event.user_agent) == (IP, UA)
    assert password not in _all_rows_text()


@pytest.mark.django_db
def test_failed_login_records_the_attempted_address_and_never_the_password(client, org_a):
    user = org_a.member.user
    attempt = "Wrong-But-Long-Password-123"
    response = client.post(
        "/accounts/login/", {"login": user.email, "password": attempt}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA
    )
    assert response.status_code == 200  # the form again, with its error
    response = client.post(
        "/accounts/login/", {"login": "nobody@example.com", "password": attempt}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA
    )
    assert response.status_code == 200
    known, unknown = _platform("auth.login_failed")
    for event in (known, unknown):
        assert event.actor_type == ActorType.ANONYMOUS
        assert event.actor_user_id is None and event.actor_label == ""
        assert event.target_type == "user"
        assert (event.ip_address, event.user_agent) == (IP, UA)
        assert event.changes == {}
    assert (known.target_id, known.target_label) == (str(user.pk), user.email)
    assert (unknown.target_id, unknown.target_label) == ("", "nobody@example.com")
    assert _events("auth.login") == []
    rows = _all_rows_text()
    assert attempt not in rows and "*****" not in rows


@pytest.mark.django_db
def test_a_failing_login_event_fails_the_login(org_a, password, monkeypatch):
    """The event is not optional: when it cannot be written the log-in answers 500 and does not stick."""
    import accounts.receivers

    def broken(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(accounts.receivers, "audit_record", broken)
    client = Client(raise_request_exception=False)
    response = client.post("/accounts/login/", {"login": org_a.member.user.email, "password": password})
    assert response.status_code == 500
    monkeypatch.undo()
    assert client.get("/dashboard/").status_code == 302  # not logged in
    assert _events("auth.login") == []


@pytest.mark.django_db
def test_logout_records_the_user(client, org_a, password):
    user = org_a.member.user
    client.post("/accounts/login/", {"login": user.email, "password": password})
    response = client.post("/accounts/logout/", REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    assert response.status_code == 302
    event = _one("auth.logout")
    _assert_user_actor(event, user)
    assert (event.target_type, event.target_id, event.organization_id) == ("user", str(user.pk), None)
    assert (event.ip_address, event.user_agent) == (IP, UA)


@pytest.mark.django_db
def test_password_change_through_allauth_records_the_user_never_the_passwords(client, org_a, password):
    user = org_a.member.user
    client.post("/accounts/login/", {"login": user.email, "password": password})
    new_password = "an-entirely-new-password-77"
    response = client.post(
        "/accounts/password/change/",
        {"oldpassword": password, "password1": new_password, "password2": new_password},
        REMOTE_ADDR=IP,
        HTTP_USER_AGENT=UA,
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    user.refresh_from_db()
    assert user.check_password(new_password)
    event = _one("auth.password_change")
    _assert_user_actor(event, user)
    assert (event.target_type, event.target_id, event.organization_id) == ("user", str(user.pk), None)
    assert (event.ip_address, event.user_agent) == (IP, UA)
    rows = _all_rows_text()
    assert password not in rows and new_password not in rows and user.password not in rows


@pytest.mark.django_db
def test_password_reset_through_allauth_records_the_user(client, user_factory, verified_email):
    user = user_factory(email="reset@example.com")
    verified_email(user, primary=True)
    client.post("/accounts/password/reset/", {"email": "reset@example.com"})
    link = next(line for line in mail.outbox[0].body.splitlines() if "/accounts/password/reset/key/" in line)
    path = link[link.index("/accounts/") :].strip()
    response = client.get(path, follow=True)
    form_path = response.redirect_chain[-1][0] if response.redirect_chain else path
    new_password = "a-brand-new-password-9"
    response = client.post(
        form_path, {"password1": new_password, "password2": new_password}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA
    )
    assert response.status_code == 302
    event = _one("auth.password_reset")
    assert (event.target_type, event.target_id, event.target_label) == ("user", str(user.pk), user.email)
    assert event.actor_user_id == user.pk and event.organization_id is None
    assert (event.ip_address, event.user_agent) == (IP, UA)
    assert new_password not in _all_rows_text()


def _totp_now(secret: str) -> str:
    counters = list(yield_hotp_counters_from_time())
    return format_hotp_value(hotp_value(secret, counters[len(counters) // 2]))


@pytest.mark.django_db
def test_totp_activation_and_deactivation_record_mfa_events(
    client, org_a, password, verified_email, django_capture_on_commit_callbacks
):
    user = org_a.member.user
    verified_email(user, primary=True)  # allauth.mfa needs a verified address
    client.post("/accounts/login/", {"login": user.email, "password": password})
    page = client.get("/accounts/2fa/totp/activate/", follow=True)
    client.post(page.redirect_chain[-1][0], {"password": password})  # allauth's reauthentication
    client.get("/accounts/2fa/totp/activate/")
    secret = client.session[SECRET_SESSION_KEY]
    with django_capture_on_commit_callbacks(execute=True):  # allauth sends the signal after its commit
        response = client.post(
            "/accounts/2fa/totp/activate/", {"code": _totp_now(secret)}, REMOTE_ADDR=IP, HTTP_USER_AGENT=UA
        )
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()
    enabled = _platform("auth.mfa_enable")
    assert sorted(event.changes["type"][1] for event in enabled) == ["recovery_codes", "totp"]
    for event in enabled:
        _assert_user_actor(event, user)
        assert (event.target_type, event.target_id) == ("user", str(user.pk))
        assert (event.ip_address, event.user_agent) == (IP, UA)
        assert event.changes["type"][0] is None
    assert secret not in _all_rows_text()

    with django_capture_on_commit_callbacks(execute=True):  # new recovery codes: the old ones stop working
        response = client.post("/accounts/2fa/recovery-codes/generate/", REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    assert response.status_code == 302
    regenerated = _platform("auth.mfa_enable")[-1]
    assert regenerated.changes == {"type": [None, "recovery_codes"], "regenerated": [None, True]}
    _assert_user_actor(regenerated, user)
    assert (regenerated.ip_address, regenerated.user_agent) == (IP, UA)
    codes = Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES).wrap().get_unused_codes()
    rows = _all_rows_text()
    assert codes and not any(code in rows for code in codes)

    response = client.post("/accounts/2fa/totp/deactivate/", REMOTE_ADDR=IP, HTTP_USER_AGENT=UA)
    assert response.status_code == 302
    assert not Authenticator.objects.filter(user=user).exists()
    disabled = _platform("auth.mfa_disable")
    assert sorted(event.changes["type"][0] for event in disabled) == ["recovery_codes", "totp"]
    for event in disabled:
        _assert_user_actor(event, user)
        assert (event.target_type, event.target_id) == ("user", str(user.pk))
        assert (event.ip_address, event.user_agent) == (IP, UA)
