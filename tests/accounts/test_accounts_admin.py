"""The accounts admin: staff actions and changes write exactly one audit event each, passwords never
appear in one, and the audit log (and the break-glass grants) can be read but not changed."""

from __future__ import annotations

import json
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.utils import timezone

from accounts.audit import audit_actor, audit_record
from accounts.models import (
    ActorType,
    ApiKey,
    AuditEvent,
    ContentAccessGrant,
    Invitation,
    Membership,
    Organization,
    Tier,
)

pytestmark = pytest.mark.django_db

REASON = "Chargebacks under review"


class _FormParser(HTMLParser):
    """The fields a browser would submit from one <form> (inputs, selects, textareas)."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id, self.inside, self.data = form_id, False, []
        self._select = self._textarea = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == self.form_id:
            self.inside = True
        if not self.inside:
            return
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in ("submit", "button", "file"):
            if attrs.get("type") in ("checkbox", "radio"):
                if "checked" in attrs:
                    self.data.append((name, attrs.get("value", "on")))
            else:
                self.data.append((name, attrs.get("value", "")))
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in attrs:
            self.data.append((self._select, attrs.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea = name
            self.data.append((name, ""))

    def handle_data(self, data):
        if self._textarea:
            self.data[-1] = (self._textarea, self.data[-1][1] + data)

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def form_data(response, form_id: str) -> dict:
    assert response.status_code == 200, response.status_code
    parser = _FormParser(form_id)
    parser.feed(response.content.decode())
    data: dict = {}
    for name, value in parser.data:
        if name in data:
            data[name] = [*(data[name] if isinstance(data[name], list) else [data[name]]), value]
        else:
            data[name] = value
    data.pop("csrfmiddlewaretoken", None)
    return data


@pytest.fixture
def staff(user_factory):
    return user_factory(is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def since():
    """Events from now on (creating the fixtures' users and organizations recorded others)."""
    return timezone.now()


def new_events(since, **filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(created_at__gte=since, **filters).order_by("created_at", "sequence"))


def change_url(obj) -> str:
    return f"/admin/accounts/{obj._meta.model_name}/{obj.pk}/change/"


# --- organizations --------------------------------------------------------------------------------


def test_suspend_action_asks_for_a_reason_and_records_one_event(admin_client, staff, org_a, org_b, since):
    url = "/admin/accounts/organization/"
    selected = [str(org_a.organization.pk)]
    missing = admin_client.post(url, {"action": "suspend", "_selected_action": selected, "reason": " "}, follow=True)
    assert "Type the reason" in missing.content.decode()
    assert not Organization.objects.get(pk=org_a.organization.pk).is_suspended and new_events(since) == []

    page = admin_client.get(url)
    assert 'name="reason"' in page.content.decode()  # typed next to the action
    done = admin_client.post(url, {"action": "suspend", "_selected_action": selected, "reason": REASON}, follow=True)
    assert f"Suspended: {org_a.organization.name}." in done.content.decode()
    organization = Organization.objects.get(pk=org_a.organization.pk)
    assert organization.is_suspended and organization.suspended_reason == REASON
    assert not Organization.objects.get(pk=org_b.organization.pk).is_suspended
    [event] = new_events(since)
    assert (event.action, event.organization_id, event.actor_type, event.actor_user_id) == (
        "organization.suspend", organization.pk, ActorType.STAFF, staff.pk
    )  # fmt: skip
    assert event.changes["suspended_reason"] == ["", REASON]

    again = admin_client.post(url, {"action": "suspend", "_selected_action": selected, "reason": "other"}, follow=True)
    assert "Already suspended" in again.content.decode() and len(new_events(since)) == 1

    admin_client.post(url, {"action": "reactivate", "_selected_action": selected})
    assert not Organization.objects.get(pk=organization.pk).is_suspended
    assert [e.action for e in new_events(since)] == ["organization.suspend", "organization.reactivate"]
    admin_client.post(url, {"action": "reactivate", "_selected_action": selected})
    assert len(new_events(since)) == 2


def test_suspension_fields_are_read_only_in_the_change_form(admin_client, org_a):
    form = admin_client.get(change_url(org_a.organization))
    data = form_data(form, "organization_form")
    assert "suspended_at" not in data and "suspended_reason" not in data
    assert "Suspended at" in form.content.decode() or "suspended at" in form.content.decode().lower()


def test_a_tier_changed_in_the_form_is_one_tier_change_event(admin_client, org_a, since):
    organization = org_a.organization
    data = form_data(admin_client.get(change_url(organization)), "organization_form")
    data["tier"] = str(Tier.objects.get(slug="free").pk)
    saved = admin_client.post(change_url(organization), data)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert Organization.objects.get(pk=organization.pk).tier.slug == "free"
    [event] = new_events(since)
    assert (event.action, event.changes, event.actor_type) == ("organization.tier_change", {"tier": ["pro", "free"]}, ActorType.STAFF)

    # A rename with a tier change: the rename as the admin's change, the tier as its own event.
    data = form_data(admin_client.get(change_url(organization)), "organization_form")
    data["tier"], data["name"] = str(Tier.objects.get(slug="pro").pk), "Acme Renamed"
    assert admin_client.post(change_url(organization), data).status_code == 302
    later = new_events(since)[1:]
    assert sorted(e.action for e in later) == ["organization.change", "organization.tier_change"]
    by_action = {e.action: e for e in later}
    assert by_action["organization.change"].changes == {"name": ["Acme", "Acme Renamed"]}
    assert by_action["organization.tier_change"].changes == {"tier": ["free", "pro"]}

    # Saving without a change records nothing.
    data = form_data(admin_client.get(change_url(organization)), "organization_form")
    assert admin_client.post(change_url(organization), data).status_code == 302
    assert len(new_events(since)) == 3


def test_membership_inline_changes_are_recorded(admin_client, org_a, user_factory, since):
    organization = org_a.organization
    data = form_data(admin_client.get(change_url(organization)), "organization_form")
    rows = int(data["memberships-TOTAL_FORMS"])
    member_row = next(i for i in range(rows) if data[f"memberships-{i}-id"] == str(org_a.member.pk))
    admin_row = next(i for i in range(rows) if data[f"memberships-{i}-id"] == str(org_a.admin.pk))
    data[f"memberships-{member_row}-role"] = "admin"
    data[f"memberships-{admin_row}-DELETE"] = "on"
    newcomer = user_factory()
    data.update(
        {
            f"memberships-{rows}-user": str(newcomer.pk),
            f"memberships-{rows}-role": "member",
            f"memberships-{rows}-organization": str(organization.pk),
            f"memberships-{rows}-created_at_0": data[f"memberships-{member_row}-created_at_0"],
            f"memberships-{rows}-created_at_1": data[f"memberships-{member_row}-created_at_1"],
            "memberships-TOTAL_FORMS": str(rows + 1),
        }
    )
    saved = admin_client.post(change_url(organization), data)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    events = {e.action: e for e in new_events(since)}
    assert sorted(events) == ["membership.create", "membership.remove", "membership.role_change"]
    assert events["membership.role_change"].changes == {"role": ["member", "admin"]}
    assert events["membership.role_change"].target_id == str(org_a.member.pk)
    assert events["membership.remove"].target_id == str(org_a.admin.pk)
    created = Membership.objects.get(user=newcomer, organization=organization)
    assert events["membership.create"].target_id == str(created.pk)
    assert all(e.organization_id == organization.pk and e.actor_type == ActorType.STAFF for e in events.values())


# --- users, tiers, keys, invitations ---------------------------------------------------------------------


def test_user_admin_never_records_a_password(admin_client, since):
    secret = "An0ther-very-secret-passw0rd"
    added = admin_client.post(
        "/admin/accounts/user/add/", {"email": "new@example.com", "password1": secret, "password2": secret, "usable_password": "true"}
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    [created] = new_events(since)
    assert created.action == "user.create" and created.changes.get("email") == [None, "new@example.com"]
    assert not any("password" in name for name in created.changes)

    from accounts.models import User

    user = User.objects.get(email="new@example.com")
    changed_secret = "Yet-an0ther-secret-passw0rd"
    url = f"/admin/accounts/user/{user.pk}/password/"
    done = admin_client.post(url, {"password1": changed_secret, "password2": changed_secret, "usable_password": "true", "set-password": ""})
    assert done.status_code == 302 and done["Location"].endswith(f"/admin/accounts/user/{user.pk}/change/"), done
    user.refresh_from_db()
    assert user.check_password(changed_secret)
    [_, password_event] = new_events(since)
    assert password_event.action == "user.change" and password_event.changes == {"password": ["[redacted]", "[redacted]"]}

    # The change form (which shows the password's hash) records the fields changed, never the hash.
    data = form_data(admin_client.get(change_url(user)), "user_form")
    data["name"] = "New Person"
    assert admin_client.post(change_url(user), data).status_code == 302
    [*_, edited] = new_events(since)
    assert edited.action == "user.change" and edited.changes == {"name": ["", "New Person"]}
    everything = json.dumps([e.changes for e in new_events(since)])
    assert secret not in everything and changed_secret not in everything and user.password not in everything
    assert "pbkdf2" not in everything and "md5$" not in everything


def test_a_password_form_that_fails_records_nothing(admin_client, user_factory, since):
    user = user_factory()
    refused = admin_client.post(f"/admin/accounts/user/{user.pk}/password/", {"password1": "a-Long-passw0rd-1", "password2": "different-passw0rd-2"})
    assert refused.status_code == 200 and new_events(since) == []


def test_tier_key_and_invitation_changes_are_recorded(admin_client, org_a, api_key_factory, since):
    tier = Tier.objects.get(slug="pro")
    data = form_data(admin_client.get(change_url(tier)), "tier_form")
    data["requests_per_minute"] = str(tier.requests_per_minute + 5)
    assert admin_client.post(change_url(tier), data).status_code == 302
    [tier_event] = new_events(since)
    assert tier_event.action == "tier.change" and tier_event.organization_id is None
    assert tier_event.changes == {"requests_per_minute": [tier.requests_per_minute, tier.requests_per_minute + 5]}

    key, secret = api_key_factory(org_a.member)
    since_key = timezone.now()
    data = form_data(admin_client.get(change_url(key)), "apikey_form")
    data["name"] = "renamed by staff"
    assert admin_client.post(change_url(key), data).status_code == 302
    [key_event] = new_events(since_key)
    assert key_event.action == "api_key.change" and key_event.organization_id == org_a.organization.pk
    assert key_event.changes == {"name": ["test key", "renamed by staff"]} and secret not in json.dumps(key_event.changes)
    assert admin_client.get("/admin/accounts/apikey/add/").status_code == 403

    invitation = Invitation.objects.create(
        organization=org_a.organization,
        email="guest@example.com",
        invited_by=org_a.owner.user,
        expires_at=timezone.now() + timedelta(days=3),
    )
    since_invitation = timezone.now()
    data = form_data(admin_client.get(change_url(invitation)), "invitation_form")
    data["role"] = "admin"
    assert admin_client.post(change_url(invitation), data).status_code == 302
    [invitation_event] = new_events(since_invitation)
    assert invitation_event.action == "invitation.change" and invitation_event.changes == {"role": ["member", "admin"]}
    assert invitation.token not in json.dumps(invitation_event.changes)


# --- the audit log is read-only, filterable, and cheap -------------------------------------------------


@pytest.fixture
def trail(org_a, org_b, staff):
    with audit_actor(user=staff):
        audit_record("organization.suspend", organization=org_a.organization, target=org_a.organization)
        audit_record("budget.update", organization=org_b.organization, target=org_b.organization, target_label="Globex budget")
    with audit_actor(system="manage.py something"):
        audit_record("audit.purge", organization=org_a.organization, target_type="audit", target_id="42")
    return list(AuditEvent.objects.all())


def _listed(response) -> list[AuditEvent]:
    assert response.status_code == 200, response.status_code
    return list(response.context["cl"].result_list)


def test_audit_event_admin_is_read_only(admin_client, trail):
    event = trail[0]
    base = "/admin/accounts/auditevent/"
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.post(f"{base}add/", {"action": "x"}).status_code == 403
    detail = admin_client.get(f"{base}{event.pk}/change/")
    assert detail.status_code == 200 and event.action in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()
    assert admin_client.post(f"{base}{event.pk}/change/", {"action": "tampered"}).status_code == 403
    assert admin_client.get(f"{base}{event.pk}/delete/").status_code == 403
    assert admin_client.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    listing = admin_client.get(base)
    assert "delete_selected" not in listing.content.decode()
    bulk = admin_client.post(base, {"action": "delete_selected", "_selected_action": [str(event.pk)], "post": "yes"})
    assert bulk.status_code in (200, 302)
    assert AuditEvent.objects.filter(pk=event.pk, action=event.action).exists()
    assert AuditEvent.objects.count() == len(trail)


def test_audit_event_admin_filters_and_search(admin_client, org_a, org_b, trail):
    base = "/admin/accounts/auditevent/"
    everything = _listed(admin_client.get(base))
    assert len(everything) == AuditEvent.objects.count()
    by_action = _listed(admin_client.get(base, {"action": "organization.suspend"}))
    assert {e.action for e in by_action} == {"organization.suspend"}
    assert {e.action for e in _listed(admin_client.get(base, {"action": "audit.*"}))} == {"audit.purge"}
    by_org = _listed(admin_client.get(base, {"organization__id__exact": str(org_b.organization.pk)}))
    assert by_org and {e.organization_id for e in by_org} == {org_b.organization.pk}
    system = _listed(admin_client.get(base, {"actor_type__exact": "system"}))
    assert [e.action for e in system] == ["audit.purge"]
    today = timezone.now().date()
    dated = _listed(admin_client.get(base, {"created_at__gte": str(today), "created_at__lt": str(today + timedelta(days=1))}))
    assert len(dated) == len(everything)
    past = _listed(admin_client.get(base, {"created_at__year": str(today.year - 1)}))
    assert past == []
    assert [e.action for e in _listed(admin_client.get(base, {"q": "Globex budget"}))] == ["budget.update"]
    assert [e.action for e in _listed(admin_client.get(base, {"q": "42"}))] == ["audit.purge"]  # target_id, exact


def test_audit_event_list_queries_do_not_grow_with_the_page(admin_client, org_a, trail, django_assert_max_num_queries):
    for n in range(60):
        audit_record("auth.login", organization=org_a.organization, target_label=f"login {n}")
    page = admin_client.get("/admin/accounts/auditevent/")  # warm the session and permission caches
    assert page.status_code == 200
    with django_assert_max_num_queries(12):
        page = admin_client.get("/admin/accounts/auditevent/")
    assert len(page.context["cl"].result_list) == 50  # list_per_page
    assert page.context["cl"].show_full_result_count is False
    assert org_a.organization.name in page.content.decode()


def test_content_access_grants_are_view_only(admin_client, staff, org_a):
    grant = ContentAccessGrant.objects.create(
        staff_user=staff, organization=org_a.organization, reason="abuse report #7", expires_at=timezone.now() + timedelta(hours=1)
    )
    base = "/admin/accounts/contentaccessgrant/"
    assert admin_client.get(base).status_code == 200
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.get(f"{base}{grant.pk}/change/").status_code == 200
    assert admin_client.post(f"{base}{grant.pk}/change/", {"reason": "edited"}).status_code == 403
    assert admin_client.post(f"{base}{grant.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ContentAccessGrant.objects.get(pk=grant.pk).reason == "abuse report #7"


def test_no_key_secret_is_editable(admin_client, org_a, api_key_factory):
    key, _ = api_key_factory(org_a.member)
    data = form_data(admin_client.get(change_url(key)), "apikey_form")
    assert "hashed_secret" not in data and "prefix" not in data
    assert ApiKey.objects.get(pk=key.pk).hashed_secret == key.hashed_secret
