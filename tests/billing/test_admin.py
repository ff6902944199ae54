import pytest

from .conftest import authorize, settle


@pytest.mark.django_db
def test_staff_see_billing_in_the_admin_and_the_ledger_is_read_only(client, user_factory, org_a, test_model):
    auth = authorize(org_a.member)
    settle(auth, org_a.member)
    staff = user_factory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    for name in ("price", "ledgerentry", "budget", "periodspend", "reservation", "ratelimitpolicy", "dailyusage"):
        response = client.get(f"/admin/billing/{name}/")
        assert response.status_code == 200, name
    assert "test-model" in client.get("/admin/billing/ledgerentry/").content.decode()
    assert client.get("/admin/billing/ledgerentry/add/").status_code == 403
    assert client.get("/admin/billing/price/add/").status_code == 200
    assert client.get("/admin/accounts/tier/").status_code == 200
