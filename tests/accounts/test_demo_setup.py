import pytest
from allauth.account.models import EmailAddress
from django.core.management import call_command

from accounts.management.commands.parley_demo_setup import DEMO_EMAIL, demo_password
from accounts.models import Membership, Role, User


@pytest.mark.django_db
def test_demo_setup_is_idempotent_and_prints_working_credentials(client, capsys):
    call_command("parley_demo_setup")
    first = capsys.readouterr().out
    call_command("parley_demo_setup")
    second = capsys.readouterr().out
    password = demo_password()
    for output in (first, second):
        assert DEMO_EMAIL in output and password in output and "/accounts/login/" in output
        assert "createsuperuser" in output
    assert User.objects.filter(email=DEMO_EMAIL).count() == 1
    user = User.objects.get(email=DEMO_EMAIL)
    assert EmailAddress.objects.get(user=user).verified
    membership = Membership.objects.select_related("organization__tier").get(user=user)
    assert membership.organization.name == "Demo"
    assert membership.organization.tier.slug == "pro"
    assert membership.role == Role.OWNER

    response = client.post("/accounts/login/", {"login": DEMO_EMAIL, "password": password})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert "Demo" in client.get("/dashboard/").content.decode()


@pytest.mark.django_db
def test_demo_setup_repairs_a_changed_password(capsys):
    call_command("parley_demo_setup")
    user = User.objects.get(email=DEMO_EMAIL)
    user.set_password("something-else-entirely")
    user.save()
    call_command("parley_demo_setup")
    user.refresh_from_db()
    assert user.check_password(demo_password())


@pytest.mark.django_db
def test_demo_setup_keeps_a_renamed_demo_organization(capsys):
    call_command("parley_demo_setup")
    membership = Membership.objects.select_related("organization").get(user__email=DEMO_EMAIL)
    membership.organization.name = "Renamed"
    membership.organization.save()
    call_command("parley_demo_setup")
    assert "organization 'Renamed'" in capsys.readouterr().out
    assert Membership.objects.filter(user__email=DEMO_EMAIL).count() == 1
