"""Pages: landing, dashboard, organization pages, allauth pages in Parley's layout, two-factor log-in."""

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import (
    SECRET_SESSION_KEY,
    format_hotp_value,
    hotp_value,
    yield_hotp_counters_from_time,
)

MEMBER_PAGES = ["/dashboard/", "/organization/", "/organization/api-keys/", "/organizations/new/"]


def _totp_now(secret: str) -> str:
    counters = list(yield_hotp_counters_from_time())
    return format_hotp_value(hotp_value(secret, counters[len(counters) // 2]))


@pytest.mark.django_db
def test_landing_page_for_anonymous_visitors(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Parley" in html and 'href="/accounts/signup/"' in html and 'href="/accounts/login/"' in html
    assert "/static/css/parley.css" in html


@pytest.mark.django_db
def test_landing_page_redirects_logged_in_users_to_the_dashboard(client, org_a):
    client.force_login(org_a.member.user)
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/"


@pytest.mark.django_db
@pytest.mark.parametrize("path", MEMBER_PAGES + ["/accounts/2fa/", "/accounts/email/"])
def test_pages_redirect_anonymous_users_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("path", MEMBER_PAGES)
def test_pages_render_for_a_member(client, org_a, path):
    client.force_login(org_a.member.user)
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="topbar"' in html and "orgswitch" in html
    assert org_a.organization.name in html


@pytest.mark.django_db
def test_dashboard_shows_organization_tier_limits_and_links(client, org_a):
    client.force_login(org_a.admin.user)
    html = client.get("/dashboard/").content.decode()
    for text in [
        "Acme",
        "Pro",
        "$50.00",
        "Requests / minute",
        "60",
        "200,000",
        'href="/chat/"',
        'href="/usage/"',
        'href="/organization/"',
        'href="/organization/api-keys/"',
        "claude-sonnet-4-5",
    ]:
        assert text in html, text


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"])
def test_allauth_pages_use_the_parley_layout(client, path):
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="topbar"' in html and 'class="card auth-card"' in html and "· Parley</title>" in html


@pytest.mark.django_db
def test_account_management_pages_render(client, org_a):
    client.force_login(org_a.member.user)
    for path in ["/accounts/email/", "/accounts/password/change/", "/accounts/2fa/"]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert 'class="manage-body card"' in response.content.decode()


@pytest.mark.django_db
def test_totp_activation_and_two_factor_login(client, org_a, password, verified_email):
    email = org_a.member.user.email
    verified_email(org_a.member.user, primary=True)  # allauth.mfa needs a verified address
    assert client.post("/accounts/login/", {"login": email, "password": password}).status_code == 302
    page = client.get("/accounts/2fa/totp/activate/", follow=True)
    # allauth asks for the password again before a security change.
    reauthenticate = page.redirect_chain[-1][0]
    assert reauthenticate.startswith("/accounts/reauthenticate/")
    assert 'class="card auth-card"' in page.content.decode()
    page = client.post(reauthenticate, {"password": password}, follow=True)
    assert page.status_code == 200
    assert "Authenticator" in page.content.decode()
    secret = client.session[SECRET_SESSION_KEY]
    response = client.post("/accounts/2fa/totp/activate/", {"code": _totp_now(secret)})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=org_a.member.user, type=Authenticator.Type.TOTP).exists()

    client.post("/accounts/logout/")
    response = client.post("/accounts/login/", {"login": email, "password": password})
    assert response.status_code == 302 and response["Location"] == "/accounts/2fa/authenticate/"
    assert client.get("/dashboard/").status_code == 302  # not logged in until the code is given
    assert client.post("/accounts/2fa/authenticate/", {"code": "000000"}).status_code == 200
    response = client.post("/accounts/2fa/authenticate/", {"code": _totp_now(secret)})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200


@pytest.mark.django_db
def test_static_css_is_served(client):
    from django.contrib.staticfiles import finders

    assert finders.find("css/parley.css")
    assert finders.find("img/logo.svg")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password/reset/",
        "/accounts/password/reset/done/",
        "/accounts/inactive/",
        "/accounts/confirm-email/",
        "/accounts/confirm-email/bad-key/",
        "/accounts/password/reset/key/1-bad/",
        "/accounts/password/reset/key/done/",
    ],
)
def test_every_anonymous_allauth_page_renders_in_the_layout(client, path):
    response = client.get(path, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="topbar"' in html and "/static/css/parley.css" in html


@pytest.mark.django_db
def test_every_account_page_renders_for_a_freshly_logged_in_user(client, org_a, password, verified_email):
    verified_email(org_a.member.user, primary=True)
    client.post("/accounts/login/", {"login": org_a.member.user.email, "password": password})
    client.post("/accounts/reauthenticate/", {"password": password})
    for path in [
        "/accounts/logout/",
        "/accounts/email/",
        "/accounts/password/change/",
        "/accounts/reauthenticate/",
        "/accounts/2fa/",
        "/accounts/2fa/totp/activate/",
        "/accounts/2fa/recovery-codes/generate/",
    ]:
        response = client.get(path, follow=True)
        assert response.status_code == 200, path
        html = response.content.decode()
        assert 'class="topbar"' in html and ("auth-card" in html or "manage-body" in html), path
