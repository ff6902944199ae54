"""The staff console in a real browser: a staff user logs in to /admin/, follows the console link and
sees the charts and tables (Chromium through Playwright, against a live Daphne on the test database)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.conversations.test_browser import browser_page, in_thread, live_daphne  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _seed(password: str) -> dict:
    from accounts.models import Membership, Tier, User
    from accounts.services import organization_create
    from billing.models import LedgerEntry
    from llm.models import ProviderCall

    tag = uuid.uuid4().hex[:6]
    staff = User.objects.create_user(email=f"staff-{tag}@example.com", password=password, is_staff=True)
    owner = User.objects.create_user(email=f"owner-{tag}@example.com", password=password)
    organization = organization_create(name=f"Console {tag}", owner=owner, tier=Tier.objects.get(slug="pro"))
    member = Membership.objects.get(organization=organization)
    now = timezone.now()
    for n, (model, cost) in enumerate([("gpt-5.2", "0.125"), ("claude-sonnet-4-5", "0.5"), ("gpt-5.2", "0.25")]):
        LedgerEntry.objects.create(
            organization=organization, membership=member, request_id=f"browser-{tag}-{n}", provider="openai",
            model=model, input_tokens=1000, output_tokens=500, input_per_mtok=1, output_per_mtok=2,
            cached_input_per_mtok=1, cost=Decimal(cost), created_at=now - timedelta(minutes=n),
        )  # fmt: skip
    for n, status in enumerate(["ok", "ok", "error"]):
        ProviderCall.objects.create(
            organization_id=organization.id, request_id=f"browser-{tag}-{n}", provider="openai", model="gpt-5.2",
            attempt=1, started_at=now - timedelta(minutes=n), time_to_first_token_ms=None if status == "error" else 300,
            duration_ms=1200, status=status, error_class="ProviderUnavailable" if status == "error" else "",
            error_message="503 upstream" if status == "error" else "", prompt_sha256="0" * 64,
        )  # fmt: skip
    return {"staff": staff.email, "organization": organization.name, "slug": organization.slug}


def test_staff_open_the_console_from_the_admin_index(browser_page, password):  # noqa: F811
    page = browser_page
    seeded = in_thread(_seed, password)

    page.goto("/admin/")
    page.fill("input[name=username]", seeded["staff"])
    page.fill("input[name=password]", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#staff-console-link")
    page.click("#staff-console-link a")
    page.wait_for_url("**/admin/console/")

    assert page.locator("#content h1").inner_text().strip() == "Staff console"
    assert page.locator("#total-cost").inner_text() == "$0.88"
    chart = page.locator("svg#day-chart")
    assert chart.is_visible()
    assert chart.locator("rect").count() >= 28  # a bar per day of the month
    assert chart.locator("rect[height]:not([height='0.0'])").count() == 1  # only today has spend
    row = page.locator(f"#spend-by-organization tr[data-organization='{seeded['slug']}']")
    assert row.is_visible() and "$0.88" in row.inner_text()
    assert row.locator(".hbar span").bounding_box()["width"] > 100  # the largest bar is full width
    models = page.locator("#spend-by-model tbody tr")
    assert models.count() == 2 and models.first.get_attribute("data-model") == "claude-sonnet-4-5"
    calls = page.locator("#provider-calls tr[data-model='gpt-5.2']")
    assert calls.locator(".calls").inner_text() == "3" and calls.locator(".errors").inner_text() == "1"
    assert "33.3 %" in calls.locator(".error-rate").inner_text()
    assert "ProviderUnavailable" in page.locator("#recent-failures").inner_text()
    top = page.locator(f"#top-spenders tr[data-organization='{seeded['slug']}']")
    assert top.is_visible() and seeded["organization"] in top.inner_text()

    # Another range: nothing spent then.
    page.fill("input[name=start]", "2020-01-01")
    page.fill("input[name=end]", "2020-01-31")
    page.click(".console-range button")
    page.wait_for_url("**start=2020-01-01**")
    assert page.locator("#total-cost").inner_text() == "$0.00"
