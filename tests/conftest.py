"""Shared fixtures: two tenants with members in each, factories, and the foreign-object check.

Every access test builds two organizations (`org_a`, `org_b`): what belongs to A must answer 404
to B's members and keys, and never appear in B's lists.
"""

import itertools
import logging
import weakref
from dataclasses import dataclass

import pytest
from django.db import connections
from django.db.backends.signals import connection_created

from accounts.models import Membership, Organization, Role, Tier, User
from accounts.services import api_key_create, organization_create

pytest_plugins = ["tests.fakeprovider.plugin"]

_counter = itertools.count(1)
PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture(autouse=True)
def _fresh_audit_context():
    """Each test starts with nobody bound as the audit actor (a view called without the middleware,
    e.g. through APIRequestFactory, binds its API key for the rest of the thread)."""
    from accounts.audit import AuditContext, audit_bind, audit_unbind

    token = audit_bind(**AuditContext().__dict__)
    yield
    try:
        audit_unbind(token)
    except ValueError:  # reset from another context (never in a sync test)
        pass


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def user_factory(db):
    def make(email: str | None = None, **extra) -> User:
        email = email or f"user{next(_counter)}@example.com"
        return User.objects.create_user(email=email, password=PASSWORD, **extra)

    return make


@pytest.fixture
def tier_factory(db):
    def make(slug: str = "free", **overrides) -> Tier:
        tier = Tier.objects.get(slug=slug)
        if overrides:
            for field, value in overrides.items():
                setattr(tier, field, value)
            tier.save()
        return tier

    return make


@pytest.fixture
def organization_factory(db, user_factory):
    def make(name: str | None = None, owner: User | None = None, tier: str = "free") -> Organization:
        owner = owner or user_factory()
        return organization_create(
            name=name or f"Org {next(_counter)}", owner=owner, tier=Tier.objects.get(slug=tier)
        )

    return make


@pytest.fixture
def member_factory(db, user_factory, organization_factory):
    """A membership: `member_factory(org, role="admin")`; a new organization when none is given."""

    def make(organization: Organization | None = None, role: str = Role.MEMBER, user: User | None = None) -> Membership:
        if organization is None:
            organization = organization_factory()
            if role == Role.OWNER:
                return Membership.objects.select_related("organization__tier", "user").get(organization=organization)
        user = user or user_factory()
        membership = Membership.objects.create(user=user, organization=organization, role=role)
        return Membership.objects.select_related("organization__tier", "user").get(pk=membership.pk)

    return make


@dataclass
class Tenant:
    organization: Organization
    owner: Membership
    admin: Membership
    member: Membership


def _tenant(name: str, tier: str, organization_factory, member_factory) -> Tenant:
    organization = organization_factory(name=name, tier=tier)
    owner = Membership.objects.select_related("organization__tier", "user").get(organization=organization)
    return Tenant(
        organization=organization,
        owner=owner,
        admin=member_factory(organization, role=Role.ADMIN),
        member=member_factory(organization, role=Role.MEMBER),
    )


@pytest.fixture
def org_a(organization_factory, member_factory) -> Tenant:
    return _tenant("Acme", "pro", organization_factory, member_factory)


@pytest.fixture
def org_b(organization_factory, member_factory) -> Tenant:
    return _tenant("Globex", "pro", organization_factory, member_factory)


@pytest.fixture
def api_key_factory(db):
    """`api_key_factory(membership)` → (key, secret)."""

    def make(membership: Membership, name: str = "test key", expires_at=None):
        return api_key_create(membership=membership, name=name, expires_at=expires_at)

    return make


@pytest.fixture
def assert_foreign_404():
    """`assert_foreign_404(client.get(url))`: another tenant's object is 404, never 403."""

    def check(response):
        status = getattr(response, "status_code", response)
        assert status == 404, f"expected 404 for another tenant's object, got {status}"

    return check


# --- Test-database teardown -------------------------------------------------------------------
# Connections that async tests opened in other threads (asgiref's sync_to_async thread, the
# conversations-db executor) stay checked out of psycopg's pool: closing the pool does not close
# them, and DROP DATABASE then fails with "being accessed by other users". Every connection Django
# opens is remembered here and closed before pytest-django drops the test database.
_db_wrappers: weakref.WeakSet = weakref.WeakSet()


def _remember_db_wrapper(sender, connection, **kwargs) -> None:
    _db_wrappers.add(connection)


connection_created.connect(_remember_db_wrapper, weak=False, dispatch_uid="tests.conftest.remember_db_wrapper")


def close_every_database_connection() -> None:
    """Close the connections of every thread, then the pools (safe only when no test is running)."""
    connections.close_all()  # this thread's, the usual way
    for wrapper in list(_db_wrappers):
        raw = wrapper.connection
        if wrapper.vendor == "postgresql" and raw is not None and not raw.closed:
            raw.close()  # another thread's: that thread is idle now, so close the socket directly
            wrapper.connection = None
    for wrapper in connections.all():
        if hasattr(wrapper, "close_pool"):  # PostgreSQL with OPTIONS["pool"] (Django 5.1+)
            wrapper.close_pool()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, with every connection closed before it is dropped."""
    yield
    with django_db_blocker.unblock():
        close_every_database_connection()


# --- SDK clients of finished event loops -----------------------------------------------------------
# The provider adapters keep one SDK client per event loop (llm.providers.base.client_for_loop). A
# server process has one loop for its whole life; tests start and end a loop per test or live
# server, and the aiohttp sessions of those loops are collected unclosed, which aiohttp reports on
# the `asyncio` logger. Those reports say nothing about the code under test.


class _UnclosedSessionsOfEndedLoops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Unclosed client session", "Unclosed connector"))


logging.getLogger("asyncio").addFilter(_UnclosedSessionsOfEndedLoops())
