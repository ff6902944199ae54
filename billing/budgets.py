"""Budgets set by people: a member's own (by the organization's owners and admins), an organization's (by staff).

Every change writes a `budget.update` audit event in the same transaction (`monthly_limit_usd`
before and after; None where no budget was or is set). Setting the value already set writes none.
The event's target is the member for a member's budget, the organization for the organization's.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.errors import InvalidInput, PermissionDenied
from accounts.models import Membership, Organization
from billing.models import Budget

# Budget.monthly_limit_usd: max_digits=12, decimal_places=4.
_LIMIT_PLACES = Decimal("0.0001")
_LIMIT_MAX = Decimal("99999999.9999")


def _limit_value(value: Decimal | None) -> str | None:
    """A limit as the event records it: fixed-point at the column's places ("25.0000"), so 25 and
    25.00 compare equal and the event reads the same whatever the caller typed."""
    return None if value is None else f"{Decimal(value).quantize(_LIMIT_PLACES):f}"


def _checked(monthly_limit_usd: Decimal | None) -> Decimal | None:
    if monthly_limit_usd is None:
        return None
    try:
        amount = Decimal(monthly_limit_usd)
        if not amount.is_finite():
            raise InvalidOperation
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidInput("A budget is an amount in US dollars.", param="monthly_limit_usd") from None
    if amount < 0:
        raise InvalidInput("A budget cannot be negative.", param="monthly_limit_usd")
    if amount > _LIMIT_MAX:
        raise InvalidInput(f"A budget is at most ${_LIMIT_MAX:,}.", param="monthly_limit_usd")
    return amount


def _budget_put(
    *, organization: Organization, membership: Membership | None, monthly_limit_usd: Decimal | None
) -> Budget | None:
    """Set (or with None remove) one budget and record the change. Call inside a transaction."""
    scope = {"membership": membership} if membership is not None else {"membership__isnull": True}
    current = Budget.objects.select_for_update().filter(organization_id=organization.pk, **scope).first()
    before = _limit_value(current.monthly_limit_usd if current else None)
    after = _limit_value(monthly_limit_usd)
    if before == after:
        return current
    if monthly_limit_usd is None:
        current.delete()
        budget = None
    elif current is None:
        budget = Budget.objects.create(
            organization_id=organization.pk,
            membership=membership,
            monthly_limit_usd=monthly_limit_usd,
            updated_at=timezone.now(),
        )
    else:
        current.monthly_limit_usd = monthly_limit_usd
        current.updated_at = timezone.now()
        current.save(update_fields=["monthly_limit_usd", "updated_at"])
        budget = current
    if membership is not None:
        target, label = membership, f"Monthly budget of {membership.user.email}"
    else:
        target, label = organization, f"Monthly budget of {organization.name}"
    audit_record(
        "budget.update",
        organization=organization.pk,
        target=target,
        target_label=label,
        changes={"monthly_limit_usd": [before, after]},
    )
    return budget


@transaction.atomic
def member_budget_set(*, actor: Membership, member: Membership, monthly_limit_usd: Decimal | None) -> Budget | None:
    """An organization owner/admin sets (or, with None, removes) a member's monthly budget."""
    if not actor.is_admin:
        raise PermissionDenied("Only the organization's owners and admins can set budgets.")
    if member.organization_id != actor.organization_id:
        raise PermissionDenied("That member is not in your organization.")
    amount = _checked(monthly_limit_usd)
    return _budget_put(organization=member.organization, membership=member, monthly_limit_usd=amount)


@transaction.atomic
def organization_budget_set(*, organization: Organization, monthly_limit_usd: Decimal | None) -> Budget | None:
    """Staff override of an organization's monthly budget (None: back to the tier's)."""
    return _budget_put(organization=organization, membership=None, monthly_limit_usd=_checked(monthly_limit_usd))


@transaction.atomic
def staff_budget_set(
    *, organization: Organization, membership: Membership | None, monthly_limit_usd: Decimal | None
) -> Budget | None:
    """Staff set (or remove) any budget of an organization: its own (no membership) or a member's (the admin)."""
    if membership is not None and membership.organization_id != organization.pk:
        raise InvalidInput("That member is not in this organization.", param="membership")
    return _budget_put(organization=organization, membership=membership, monthly_limit_usd=_checked(monthly_limit_usd))
