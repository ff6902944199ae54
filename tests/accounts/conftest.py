import pytest
from allauth.account.models import EmailAddress


@pytest.fixture
def login(client):
    """`login(membership_or_user)`: log the test client in (and select the membership's organization)."""

    def do(who):
        from accounts.middleware import SESSION_KEY

        user = getattr(who, "user", who)
        client.force_login(user)
        if hasattr(who, "organization_id"):
            session = client.session
            session[SESSION_KEY] = str(who.organization_id)
            session.save()
        return client

    return do


@pytest.fixture
def verified_email():
    def make(user, email: str | None = None, *, verified: bool = True, primary: bool = False):
        return EmailAddress.objects.create(user=user, email=email or user.email, verified=verified, primary=primary)

    return make


@pytest.fixture(autouse=True)
def _no_allauth_rate_limits(settings):
    # allauth keeps its rate-limit counters in the cache, which is Redis under `make test` and
    # outlives a test's transaction: without this, a re-run of the suite would be throttled.
    settings.ACCOUNT_RATE_LIMITS = False


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    # PBKDF2 costs ~0.2 s per user here; the two-tenant fixtures create six users per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
