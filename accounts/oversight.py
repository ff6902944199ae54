"""Staff actions on organizations: suspend, reactivate, change the tier. Each one audited.

Called by the admin (accounts/admin.py) and by the operators' commands (`manage.py
organization_suspend SLUG`, `manage.py organization_reactivate SLUG`). Who acted comes from the bound
audit context (the admin's request, or `audit_actor(system=...)` in a command).

Each service locks the organization's row, changes it and records its event in one transaction, so a
change without its event cannot commit. Saving the organization forgets every process's remembered API
keys and members (`accounts.selectors.auth_generation_bump`, connected to Organization's post_save): a
suspension applies to the very next API call, turn and websocket frame, in every process.

A suspended organization's members can still log in; its API keys (`api_key_authenticate`), turns
(`conversations.engine.turn_prepare`) and websockets (accounts/ws.py, `membership_refresh`) are refused
with `organization_suspended` (accounts.errors.OrganizationSuspended), and the pages say why.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.errors import InvalidInput
from accounts.models import Organization, Tier

SUSPENDED_REASON_MAX = Organization._meta.get_field("suspended_reason").max_length


def _locked(organization: Organization) -> Organization:
    return Organization.objects.select_for_update().select_related("tier").get(pk=organization.pk)


def _refresh(target: Organization, source: Organization) -> None:
    """Keep the caller's instance in step with what was saved."""
    target.suspended_at, target.suspended_reason = source.suspended_at, source.suspended_reason
    target.tier_id = source.tier_id
    target.tier = source.tier


def organization_suspend(*, organization: Organization, reason: str) -> bool:
    """Suspend the organization, giving a reason (shown to its members). Returns whether anything
    changed: suspending a suspended organization changes nothing and records nothing."""
    reason = " ".join((reason or "").split())
    if len(reason) > SUSPENDED_REASON_MAX:
        raise InvalidInput(f"The reason can be at most {SUSPENDED_REASON_MAX} characters long.")
    with transaction.atomic():
        current = _locked(organization)
        if current.is_suspended:
            _refresh(organization, current)
            return False
        current.suspended_at = timezone.now()
        current.suspended_reason = reason
        current.save(update_fields=["suspended_at", "suspended_reason"])
        audit_record(
            "organization.suspend",
            organization=current,
            target=current,
            changes={"suspended": [False, True], "suspended_reason": ["", reason]},
        )
    _refresh(organization, current)
    return True


def organization_reactivate(*, organization: Organization) -> bool:
    """Lift a suspension. Returns whether anything changed (an active organization: nothing, no event)."""
    with transaction.atomic():
        current = _locked(organization)
        if not current.is_suspended:
            _refresh(organization, current)
            return False
        reason = current.suspended_reason
        current.suspended_at = None
        current.suspended_reason = ""
        current.save(update_fields=["suspended_at", "suspended_reason"])
        audit_record(
            "organization.reactivate",
            organization=current,
            target=current,
            changes={"suspended": [True, False], "suspended_reason": [reason, ""]},
        )
    _refresh(organization, current)
    return True


def organization_tier_change(*, organization: Organization, tier: Tier) -> bool:
    """Move the organization to another tier (its limits apply to the next turn). Records
    `organization.tier_change` with the tiers' slugs; the same tier changes nothing."""
    with transaction.atomic():
        current = _locked(organization)
        before = current.tier
        if before.pk == tier.pk:
            _refresh(organization, current)
            return False
        current.tier = tier
        current.save(update_fields=["tier"])
        audit_record(
            "organization.tier_change",
            organization=current,
            target=current,
            changes={"tier": [before.slug, tier.slug]},
        )
    _refresh(organization, current)
    return True
