"""The Audit log tab in a real browser: Chromium (Playwright) against a live Daphne on the test database.

An owner logs in, opens Organization → Audit log, filters by action, sees the matching rows (and
only those), and downloads the CSV of the same filter, which is recorded as an `audit.export`.
A member of the same organization sees no tab and is refused the page.
"""

from __future__ import annotations

import csv
import io

import pytest

import tests.conversations.test_browser as live
from accounts.audit import audit_actor, audit_record
from accounts.models import AuditEvent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# The live server and the browser of the chat page's tests (a Daphne process on the test database).
live_daphne = live.live_daphne
browser_page = live.browser_page


@pytest.fixture(autouse=True)
def _fast_password_hasher():
    """Overrides tests/accounts/conftest.py's MD5 hasher: the live server checks passwords with the
    project's own hashers, so the users' passwords are hashed with those."""


@pytest.fixture
def seeded(org_a, org_b, password):
    """A's log: three budget changes and two renames; B's log: a budget change A must not see."""
    for index in range(3):
        with audit_actor(user=org_a.admin.user, ip_address="203.0.113.9"):
            audit_record(
                "budget.update",
                organization=org_a.organization,
                target=org_a.member,
                target_label=f"budget-of-member-{index}",
                changes={"monthly_limit_usd": [f"{index}.00", f"{index + 10}.00"]},
            )
    for name in ("Acme One", "Acme Two"):
        with audit_actor(user=org_a.owner.user, ip_address="203.0.113.9"):
            audit_record("organization.rename", organization=org_a.organization, target=org_a.organization,
                         changes={"name": ["Acme", name]})  # fmt: skip
    with audit_actor(user=org_b.owner.user):
        audit_record("budget.update", organization=org_b.organization, target_label="globex-budget")
    return org_a


def log_in(page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.locator("form input[name=password]").press("Enter")
    assert "/accounts/login/" not in page.url, page.content()[:2000]


def test_an_owner_filters_the_audit_log_and_downloads_it(seeded, browser_page, password):
    page = browser_page
    tenant = seeded
    log_in(page, tenant.owner.user.email, password)

    page.goto("/organization/")
    page.click("nav.tabs a:has-text('Audit log')")
    page.wait_for_url("**/organization/audit/")
    assert page.locator("nav.tabs a[aria-current=page]").inner_text() == "Audit log"
    rows = page.locator("#audit-table tbody tr")
    actions = rows.evaluate_all("rows => rows.map(r => r.dataset.action)")
    assert actions.count("budget.update") == 3 and actions.count("organization.rename") == 2
    assert "globex-budget" not in page.content()

    page.select_option("#audit-action", "budget.update")
    with page.expect_navigation():
        page.click("#audit-filters button[type=submit]")
    assert "action=budget.update" in page.url
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.action)") == ["budget.update"] * 3
    first = rows.first.inner_text()
    assert "budget-of-member-2" in first and "monthly_limit_usd: 2.00 → 12.00" in first
    assert tenant.admin.user.email in first and "203.0.113.9" in first
    assert page.locator("#audit-action").input_value() == "budget.update"  # the filter stays chosen

    with page.expect_download() as download:
        page.click("#audit-export")
    assert download.value.suggested_filename.startswith(f"parley-audit-{tenant.organization.slug}-")
    with open(download.value.path(), encoding="utf-8") as handle:
        exported = list(csv.DictReader(io.StringIO(handle.read())))
    assert [row["target"] for row in exported] == ["budget-of-member-2", "budget-of-member-1", "budget-of-member-0"]

    def export_events():
        return list(
            AuditEvent.objects.filter(organization=tenant.organization, action="audit.export").values_list(
                "changes", flat=True
            )
        )

    assert [changes["action"] for changes in live.in_thread(export_events)] == [[None, "budget.update"]]
    page.goto("/organization/audit/?action=audit.export")  # and the export shows in the log
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.action)") == ["audit.export"]
    assert "action: — → budget.update" in rows.first.inner_text()


def test_a_member_sees_no_tab_and_is_refused(seeded, browser_page, password):
    page = browser_page
    log_in(page, seeded.member.user.email, password)
    page.goto("/organization/")
    assert page.locator("nav.tabs a:has-text('Audit log')").count() == 0
    response = page.goto("/organization/audit/")
    assert response.status == 403
    assert "budget-of-member" not in page.content()
