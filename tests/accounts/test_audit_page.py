"""The organization's "Audit log" tab (/organization/audit/) and its CSV export: owners and admins
see their organization's events and nothing of another's, with filters and pages; members are
refused and see no tab; the export streams the same rows, defused for spreadsheets, and is itself
an `audit.export` event."""

from __future__ import annotations

import contextlib
import csv
import io
import types
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import audit
from accounts.audit import audit_actor, audit_record
from accounts.models import AuditEvent

pytestmark = pytest.mark.django_db

AUDIT_URL = "/organization/audit/"
CSV_URL = "/organization/audit/export.csv"


@contextlib.contextmanager
def recorded_at(moment: datetime):
    """Events recorded in the block carry `moment` as their time (the chain stays valid)."""
    real = audit.timezone
    audit.timezone = types.SimpleNamespace(now=lambda: moment, is_aware=real.is_aware)
    try:
        yield
    finally:
        audit.timezone = real


def record(tenant, action="organization.rename", *, by=None, changes=None, label=None, ip="203.0.113.7"):
    with audit_actor(user=(by or tenant.owner).user, ip_address=ip, user_agent="pytest"):
        return audit_record(
            action,
            organization=tenant.organization,
            target=tenant.organization,
            target_label=label,
            changes=changes if changes is not None else {"name": ["Old name", "New name"]},
        )


def body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


def events_section(html: str) -> str:
    """The events table of the page (the filter form echoes what was asked)."""
    start = html.index('id="audit-events"')
    return html[start : html.index("</section>", start)]


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body(response))))


# --- who may look ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_see_their_organizations_events(login, org_a, org_b, role):
    record(org_a, changes={"name": ["Acme", "Acme Corp"]}, label="acme-event-target")
    record(org_b, label="globex-event-target")
    response = login(getattr(org_a, role)).get(AUDIT_URL)
    assert response.status_code == 200
    html = body(response)
    assert "organization.rename" in html and "acme-event-target" in html
    assert "<strong>name</strong>: Acme → Acme Corp" in html
    assert "203.0.113.7" in html and org_a.owner.user.email in html
    assert "globex-event-target" not in html
    assert 'aria-current="page">Audit log</a>' in html


def test_a_member_is_refused_and_sees_no_tab(login, org_a):
    record(org_a, label="acme-event-target")
    client = login(org_a.member)
    for url in (AUDIT_URL, CSV_URL, AUDIT_URL + "?action=organization.rename"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert "acme-event-target" not in body(response)
    for page in ("/organization/", "/organization/api-keys/"):
        html = body(client.get(page))
        assert "Audit log" not in html and AUDIT_URL not in html, page
    assert not AuditEvent.objects.filter(action="audit.export").exists()  # a refused export records nothing


def test_the_tab_shows_for_owners_and_admins(login, org_a):
    for who in (org_a.owner, org_a.admin):
        for page in ("/organization/", "/organization/api-keys/"):
            html = body(login(who).get(page))
            assert f'<a href="{AUDIT_URL}" >Audit log</a>' in html, page


def test_anonymous_visitors_are_sent_to_log_in(client):
    for url in (AUDIT_URL, CSV_URL):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")


def test_only_get(login, org_a):
    assert login(org_a.owner).post(AUDIT_URL).status_code == 405


def test_another_organizations_events_never_appear(login, org_a, org_b):
    """Even when B's owner asks for A's actor and action by name."""
    record(org_a, action="budget.update", label="acme-budget")
    record(org_b, action="api_key.create", label="globex-key")
    client = login(org_b.owner)
    # the filter suggestions name nobody of A
    html = body(client.get(AUDIT_URL))
    assert org_a.owner.user.email not in html and org_a.member.user.email not in html
    for query in ("", f"?actor={org_a.owner.user.email}", "?action=budget.update"):
        html = events_section(body(client.get(AUDIT_URL + query)))
        assert "acme-budget" not in html and org_a.owner.user.email not in html, query
    for query in ("", f"?actor={org_a.owner.user.email}", "?action=budget.update"):
        rows = csv_rows(client.get(CSV_URL + query))
        assert all(row["target"] != "acme-budget" for row in rows), query
        assert all(row["actor"] != org_a.owner.user.email for row in rows), query
    assert list(audit.audit_events_for(organization=org_b.organization, action="budget.update")) == []


def test_staff_break_glass_grants_show_like_any_event(login, org_a, org_b, user_factory):
    from accounts.content_access import content_access_request

    staff = user_factory(email="support@parley.example", is_staff=True)
    content_access_request(
        staff_user=staff, organization=org_a.organization, reason="Abuse report #42 on a shared chat"
    )
    content_access_request(staff_user=staff, organization=org_b.organization, reason="Globex billing question here")
    html = events_section(body(login(org_a.owner).get(AUDIT_URL + "?action=staff.content_access")))
    assert html.count('<tr data-action="staff.content_access">') == 1
    assert "support@parley.example" in html and "Staff user" in html
    assert "<strong>reason</strong>: — → Abuse report #42 on a shared chat" in html
    assert "<strong>minutes</strong>: — → 60" in html
    assert "Globex" not in html


def test_events_recorded_by_real_services_show(login, org_a, api_key_factory):
    """The services' own events (accounts.services records them in their transactions)."""
    from accounts.services import api_key_revoke, organization_rename

    key, _ = api_key_factory(org_a.member, name="acme-ci-key")
    api_key_revoke(membership=org_a.owner, key_id=key.id)
    organization_rename(membership=org_a.admin, name="Acme Renamed")
    html = body(login(org_a.owner).get(AUDIT_URL))
    assert '<tr data-action="api_key.create">' in html and '<tr data-action="api_key.revoke">' in html
    assert '<tr data-action="organization.rename">' in html and "Acme Renamed" in html
    assert "acme-ci-key" in html and org_a.member.user.email in html and org_a.admin.user.email in html


# --- filters and pages --------------------------------------------------------------------------


def test_filter_by_action(login, org_a):
    record(org_a, action="organization.rename", label="renamed-target")
    record(org_a, action="budget.update", label="budget-target")
    client = login(org_a.owner)
    html = body(client.get(AUDIT_URL + "?action=budget.update"))
    assert "budget-target" in html and "renamed-target" not in html
    assert '<option value="budget.update" selected>' in html
    assert '<option value="staff.content_access" >' in html  # the known actions are offered


def test_filter_by_actor_email_and_key_label(login, org_a, api_key_factory):
    key, _ = api_key_factory(org_a.admin, name="deploy-bot")
    record(org_a, by=org_a.owner, label="by-owner")
    record(org_a, by=org_a.admin, label="by-admin")
    with audit_actor(api_key=key):
        audit_record("budget.update", organization=org_a.organization, target_label="by-admins-key")
    client = login(org_a.owner)
    html = body(client.get(AUDIT_URL, {"actor": org_a.admin.user.email.upper()}))
    assert "by-admin" in html and "by-admins-key" in html and "by-owner" not in html  # the e-mail finds the key's too
    html = body(client.get(AUDIT_URL, {"actor": f"deploy-bot ({key.prefix}…)"}))
    assert "by-admins-key" in html and "by-admin<" not in html and "by-owner" not in html
    assert "API key" in html  # the actor's kind is shown
    assert f'<option value="deploy-bot ({key.prefix}…)">' in html  # and suggested


def test_filter_by_utc_days(login, org_a):
    day = datetime(2026, 11, 10, tzinfo=UTC)
    for offset, label in ((-1, "before-range"), (0, "first-day"), (1, "last-day-late"), (2, "after-range")):
        moment = (
            day + timedelta(days=offset, hours=23, minutes=59, seconds=59)
            if offset == 1
            else day + timedelta(days=offset)
        )
        with recorded_at(moment):
            record(org_a, label=label)
    client = login(org_a.owner)
    html = body(client.get(AUDIT_URL, {"from": "2026-11-10", "to": "2026-11-11"}))
    assert "first-day" in html and "last-day-late" in html
    assert "before-range" not in html and "after-range" not in html
    assert "2026-11-11 23:59:59" in html  # times in UTC
    html = body(client.get(AUDIT_URL, {"from": "2026-11-12"}))
    assert "after-range" in html and "first-day" not in html


def test_bad_dates_are_explained_not_failed(login, org_a):
    record(org_a, label="still-listed")
    client = login(org_a.owner)
    for query in ({"from": "10/11/2026"}, {"from": "2026-11-12", "to": "2026-11-10"}):
        response = client.get(AUDIT_URL, query)
        assert response.status_code == 200
        html = body(response)
        assert 'role="alert"' in html and "still-listed" in html
        assert client.get(CSV_URL, query).status_code == 400


def test_pages_of_fifty_newest_first_keep_the_filters(login, org_a):
    start = timezone.now() - timedelta(hours=2)
    for index in range(120):
        with recorded_at(start + timedelta(seconds=index)):
            record(org_a, action="budget.update", label=f"event-{index:03d}")
    record(org_a, action="organization.rename", label="other-action")
    client = login(org_a.owner)
    query = "action=budget.update&from=" + start.date().isoformat()

    with CaptureQueriesContext(connection) as queries:
        first = body(client.get(f"{AUDIT_URL}?{query}"))
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "audit" in q["sql"]]
    assert first.count("<tr data-action=") == 50
    assert first.index("event-119") < first.index("event-070") and "event-069" not in first
    assert "other-action" not in first
    assert f'href="?{query.replace("&", "&amp;")}&amp;page=2" rel="next"' in first
    assert "← Newer" not in first

    second = body(client.get(f"{AUDIT_URL}?{query}&page=2"))
    assert second.count("<tr data-action=") == 50 and "event-069" in second and "event-020" in second
    assert f'href="?{query.replace("&", "&amp;")}&amp;page=1" rel="prev"' in second

    third = body(client.get(f"{AUDIT_URL}?{query}&page=3"))
    assert third.count("<tr data-action=") == 20 and "event-000" in third
    assert 'rel="next"' not in third and "(101–120)" in third

    beyond = client.get(f"{AUDIT_URL}?{query}&page=9")
    assert beyond.status_code == 200 and "No more events" in body(beyond)
    assert body(client.get(f"{AUDIT_URL}?{query}&page=x")).count("<tr data-action=") == 50


# --- CSV export ---------------------------------------------------------------------------------


def test_csv_export_streams_the_filtered_events(login, org_a, org_b):
    record(org_a, action="budget.update", changes={"monthly_limit_usd": ["10.00", "25.00"]}, label="acme-budget")
    record(org_a, action="organization.rename", label="acme-renamed")
    record(org_b, action="budget.update", label="globex-budget")
    client = login(org_a.admin)
    response = client.get(CSV_URL, {"action": "budget.update"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="parley-audit-{org_a.organization.slug}-')
    assert response["Cache-Control"] == "no-store"
    text = body(response)
    assert text.splitlines()[0] == ",".join(
        ["created_at", "actor_type", "actor", "action", "target_type", "target_id", "target", "changes",
         "ip_address", "user_agent", "request_id", "sequence", "event_id"]
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["target"] for row in rows] == ["acme-budget"]
    row = rows[0]
    assert row["action"] == "budget.update" and row["actor"] == org_a.owner.user.email and row["actor_type"] == "user"
    assert row["changes"] == '{"monthly_limit_usd": ["10.00", "25.00"]}'
    assert row["ip_address"] == "203.0.113.7" and row["user_agent"] == "pytest"
    assert row["target_type"] == "organization" and row["target_id"] == str(org_a.organization.id)
    assert datetime.fromisoformat(row["created_at"]).utcoffset() == timedelta(0)


def test_the_export_is_itself_an_event(login, org_a, org_b):
    client = login(org_a.owner)
    response = client.get(CSV_URL, {"action": "budget.update", "actor": "someone@example.com", "from": "2026-11-01"})
    assert response.status_code == 200
    body(response)
    export = AuditEvent.objects.get(action="audit.export")
    assert export.organization_id == org_a.organization.id
    assert export.actor_user_id == org_a.owner.user.id and export.actor_label == org_a.owner.user.email
    assert export.changes == {
        "actor": [None, "someone@example.com"],
        "action": [None, "budget.update"],
        "since": [None, "2026-11-01T00:00:00+00:00"],
        "until": [None, None],
    }
    assert not AuditEvent.objects.filter(organization=org_b.organization, action="audit.export").exists()
    # and it shows in the log
    assert "audit.export" in body(client.get(AUDIT_URL + "?action=audit.export"))


def test_csv_cells_cannot_become_formulas(login, org_a):
    for label in ('=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "plain"):
        record(org_a, label=label)
    rows = csv_rows(login(org_a.owner).get(CSV_URL))
    targets = {row["target"] for row in rows}
    assert targets >= {'\'=HYPERLINK("http://evil")', "'+1+1", "'-2+3", "'@SUM(A1)", "'\tTAB", "plain"}
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
