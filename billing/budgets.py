"""Budgets set by people: a member's own (by the organization's owners and admins), an organization's (by staff)."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from accounts.errors import InvalidInput, PermissionDenied
from accounts.models import Membership, Organization
from billing.models import Budget


@transaction.atomic
def member_budget_set(*, actor: Membership, member: Membership, monthly_limit_usd: Decimal | None) -> Budget | None:
    """An organization owner/admin sets (or, with None, removes) a member's monthly budget."""
    if not actor.is_admin:
        raise PermissionDenied("Only the organization's owners and admins can set budgets.")
    if member.organization_id != actor.organization_id:
        raise PermissionDenied("That member is not in your organization.")
    if monthly_limit_usd is None:
        Budget.objects.filter(organization_id=actor.organization_id, membership=member).delete()
        return None
    if monthly_limit_usd < 0:
        raise InvalidInput("A budget cannot be negative.")
    budget, _ = Budget.objects.update_or_create(
        organization_id=actor.organization_id,
        membership=member,
        defaults={"monthly_limit_usd": monthly_limit_usd, "updated_at": timezone.now()},
    )
    return budget


def organization_budget_set(*, organization: Organization, monthly_limit_usd: Decimal | None) -> Budget | None:
    """Staff override of an organization's monthly budget (None: back to the tier's)."""
    if monthly_limit_usd is None:
        Budget.objects.filter(organization=organization, membership__isnull=True).delete()
        return None
    budget, _ = Budget.objects.update_or_create(
        organization=organization,
        membership=None,
        defaults={"monthly_limit_usd": monthly_limit_usd, "updated_at": timezone.now()},
    )
    return budget
