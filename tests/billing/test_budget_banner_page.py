"""The budget banner on the pages (base.html): shown from 75 % of a budget, not below."""

from decimal import Decimal

import pytest

from billing.budgets import organization_budget_set

from .conftest import authorize, settle

pytestmark = pytest.mark.django_db


def _spend_three_tenths_of_a_cent(tenant) -> None:
    # The test model at $1 / $2 per million: 1000 in + 1000 out = $0.003.
    settle(authorize(tenant.member), tenant.member)


def test_an_organization_at_75_percent_sees_the_banner_on_the_chat_page(client, org_a, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.004"))
    _spend_three_tenths_of_a_cent(org_a)  # 75 %
    client.force_login(org_a.member.user)
    response = client.get("/chat/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="budget-banner"' in html
    assert "monthly budget is 75% used" in html and 'href="/usage/"' in html
    # Above <main>, so every page shows it in the same place.
    assert html.index('class="budget-banner"') < html.index('<main id="main"')


def test_an_organization_under_75_percent_sees_no_banner(client, org_a, org_b, test_model):
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.005"))
    _spend_three_tenths_of_a_cent(org_a)  # 60 %
    organization_budget_set(organization=org_b.organization, monthly_limit_usd=Decimal("0.004"))
    _spend_three_tenths_of_a_cent(org_b)  # another tenant at 75 % changes nothing here
    client.force_login(org_a.member.user)
    response = client.get("/chat/")
    assert response.status_code == 200
    assert "budget-banner" not in response.content.decode()


def test_a_used_up_budget_says_when_it_resets(client, org_a, test_model):
    _spend_three_tenths_of_a_cent(org_a)
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.002"))  # staff lowered it
    client.force_login(org_a.member.user)
    html = client.get("/chat/").content.decode()
    assert "budget-banner-exceeded" in html and "00:00 UTC" in html
