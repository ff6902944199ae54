"""Sign-up, log-in, log-out and password reset through the real allauth views."""

import pytest
from django.core import mail

from accounts.models import Membership, Organization, Role, User


@pytest.mark.django_db
def test_signup_creates_user_personal_organization_and_owner_membership(client, password):
    response = client.post(
        "/accounts/signup/",
        {"email": "Ada@Example.com", "password1": password, "password2": password},
    )
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    user = User.objects.get(email="ada@example.com")
    membership = Membership.objects.select_related("organization__tier").get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.is_personal
    assert membership.organization.tier.slug == "free"
    assert membership.organization.name == "ada's workspace"
    # The user is logged in and lands on a dashboard showing that organization.
    dashboard = client.get("/dashboard/")
    assert dashboard.status_code == 200
    assert "ada&#x27;s workspace" in dashboard.content.decode()


@pytest.mark.django_db
def test_signup_rejects_a_taken_email_and_creates_nothing(client, user_factory, password):
    user_factory(email="taken@example.com")
    organizations = Organization.objects.count()
    response = client.post(
        "/accounts/signup/", {"email": "taken@example.com", "password1": password, "password2": password}
    )
    assert response.status_code == 200
    assert "already registered" in response.content.decode()
    assert Organization.objects.count() == organizations


@pytest.mark.django_db
def test_signup_with_mismatched_passwords_creates_nothing(client):
    response = client.post(
        "/accounts/signup/", {"email": "x@example.com", "password1": "one-long-password-1", "password2": "other-1"}
    )
    assert response.status_code == 200
    assert not User.objects.filter(email="x@example.com").exists()
    assert Organization.objects.count() == 0


@pytest.mark.django_db
def test_login_with_email_and_logout(client, user_factory, member_factory, password):
    member_factory(user=user_factory(email="grace@example.com"))
    response = client.post("/accounts/login/", {"login": "grace@example.com", "password": password})
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200

    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 302


@pytest.mark.django_db
def test_user_without_organization_is_asked_to_create_one(client, user_factory):
    client.force_login(user_factory())
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == "/organizations/new/"
    response = client.post("/organizations/new/", {"name": "Team Rocket"})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200


@pytest.mark.django_db
def test_login_with_wrong_password_is_refused(client, user_factory):
    user_factory(email="grace@example.com")
    response = client.post("/accounts/login/", {"login": "grace@example.com", "password": "wrong-password"})
    assert response.status_code == 200
    assert "not correct" in response.content.decode()
    assert client.get("/dashboard/").status_code == 302


@pytest.mark.django_db
def test_password_reset_sends_an_email_with_a_working_link(client, user_factory, verified_email):
    user = user_factory(email="reset@example.com")
    verified_email(user, primary=True)
    response = client.post("/accounts/password/reset/", {"email": "reset@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/accounts/password/reset/key/" in line)
    path = link[link.index("/accounts/") :].strip()
    response = client.get(path, follow=True)
    assert response.status_code == 200
    form_path = response.redirect_chain[-1][0] if response.redirect_chain else path
    response = client.post(form_path, {"password1": "a-brand-new-password-9", "password2": "a-brand-new-password-9"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password("a-brand-new-password-9")


@pytest.mark.django_db
def test_mandatory_verification_blocks_login_until_verified(
    client, settings, password, django_capture_on_commit_callbacks
):
    settings.ACCOUNT_EMAIL_VERIFICATION = "mandatory"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/accounts/signup/", {"email": "new@example.com", "password1": password, "password2": password}
        )
    assert response.status_code == 302
    assert "confirm-email" in response["Location"]
    assert len(mail.outbox) == 1
    assert client.get("/dashboard/").status_code == 302
    # The organization exists already; only the log-in waits for the address to be verified.
    assert Membership.objects.filter(user__email="new@example.com", role=Role.OWNER).exists()
