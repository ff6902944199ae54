import pytest

from accounts.models import Membership, Role


@pytest.mark.django_db
def test_two_tenants_have_separate_owners(org_a, org_b):
    assert org_a.organization != org_b.organization
    assert org_a.owner.role == Role.OWNER
    assert set(Membership.objects.filter(organization=org_a.organization).values_list("user", flat=True)).isdisjoint(
        Membership.objects.filter(organization=org_b.organization).values_list("user", flat=True)
    )
