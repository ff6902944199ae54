"""Break-glass: staff read one organization's conversations only with a written reason, for a while.

By default staff (superusers included) see metadata, usage and call logs, never what members wrote or
models answered. A staff user who must read one organization's conversations (support, abuse) asks
with `content_access_request`: the grant covers that organization only, lasts
`PARLEY_CONTENT_ACCESS_MINUTES` (default 60) unless a shorter or longer time within
`MIN_MINUTES..MAX_MINUTES` is asked for, and is recorded as a `staff.content_access` event in that
organization's own audit chain, so its owners see who asked, why and until when. The event commits
with the grant or not at all. A revocation is recorded the same way (`changes` holds `revoked_at`).

`content_access_allowed` is the one check; the admin uses `content_visible_expression` to annotate
a queryset with the same rule (one query for a whole list). docs/privacy.md is the policy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet, Value
from django.db.models.expressions import Expression
from django.utils import timezone

from accounts.audit import audit_record
from accounts.errors import InvalidInput, NotFound, PermissionDenied
from accounts.models import ContentAccessGrant, Organization

ACTION = "staff.content_access"
DEFAULT_MINUTES = 60
MIN_MINUTES = 5
MAX_MINUTES = 480
REASON_MIN_CHARS = 10
REASON_MAX_CHARS = 2000


def _is_staff(user: Any) -> bool:
    """Active staff; superusers are staff like any other (no exception for them)."""
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
    )


def content_access_default_minutes() -> int:
    """The setting, kept within the bounds (a misconfigured value never means 'forever')."""
    try:
        minutes = int(getattr(settings, "PARLEY_CONTENT_ACCESS_MINUTES", DEFAULT_MINUTES))
    except (TypeError, ValueError):
        minutes = DEFAULT_MINUTES
    return max(MIN_MINUTES, min(MAX_MINUTES, minutes))


def content_access_request(
    *, staff_user, organization: Organization, reason: str, minutes: int | None = None
) -> ContentAccessGrant:
    """Grant `staff_user` access to `organization`'s conversation content for `minutes`.

    Raises PermissionDenied for anyone who is not active staff, InvalidInput for a reason shorter
    than REASON_MIN_CHARS (or longer than REASON_MAX_CHARS) or minutes outside MIN..MAX. Writes one
    `staff.content_access` event in the organization's chain, in the same transaction.
    """
    if not _is_staff(staff_user):
        raise PermissionDenied("Only staff may ask for access to an organization's conversations.")
    if not isinstance(organization, Organization):
        raise InvalidInput("Choose an organization.", param="organization")
    reason = (reason or "").strip()
    if len(reason) < REASON_MIN_CHARS:
        raise InvalidInput(f"Write why you need access (at least {REASON_MIN_CHARS} characters).", param="reason")
    if len(reason) > REASON_MAX_CHARS:
        raise InvalidInput(f"The reason is limited to {REASON_MAX_CHARS} characters.", param="reason")
    if minutes is None:
        minutes = content_access_default_minutes()
    elif isinstance(minutes, bool) or not isinstance(minutes, int) or not MIN_MINUTES <= minutes <= MAX_MINUTES:
        raise InvalidInput(f"Access lasts {MIN_MINUTES} to {MAX_MINUTES} minutes.", param="minutes")

    now = timezone.now()
    with transaction.atomic():
        grant = ContentAccessGrant.objects.create(
            staff_user=staff_user,
            organization=organization,
            reason=reason,
            created_at=now,
            expires_at=now + timedelta(minutes=minutes),
        )
        audit_record(
            ACTION,
            organization=organization,
            target=grant,
            target_label=f"{staff_user.email} → {organization.name}"[:255],
            changes={
                "reason": [None, reason],
                "expires_at": [None, grant.expires_at],
                "minutes": [None, minutes],
            },
            user=staff_user,
        )
    return grant


def content_access_revoke(*, staff_user, grant_id: UUID | str) -> ContentAccessGrant:
    """End one of `staff_user`'s own grants now (recorded in the organization's chain).

    Someone else's grant, or a missing one, is NotFound. Revoking a revoked grant changes nothing.
    """
    if not _is_staff(staff_user):
        raise PermissionDenied("Only staff may revoke content access.")
    with transaction.atomic():
        try:
            grant = (
                ContentAccessGrant.objects.select_for_update()
                .select_related("organization")
                .get(pk=grant_id, staff_user=staff_user)
            )
        except (ContentAccessGrant.DoesNotExist, ValidationError, ValueError, TypeError):
            raise NotFound("No such access grant.") from None  # a malformed id reads as a missing one
        if grant.revoked_at is not None:
            return grant
        grant.revoked_at = timezone.now()
        grant.save(update_fields=["revoked_at"])
        audit_record(
            ACTION,
            organization=grant.organization_id,
            target=grant,
            target_label=f"{staff_user.email} → {grant.organization.name}"[:255],
            changes={"revoked_at": [None, grant.revoked_at]},
            user=staff_user,
        )
    return grant


def content_access_grants_active(*, user) -> QuerySet[ContentAccessGrant]:
    """The user's grants in force now: unrevoked, unexpired; none unless the user is active staff."""
    if not _is_staff(user):
        return ContentAccessGrant.objects.none()
    return ContentAccessGrant.objects.filter(
        staff_user_id=user.pk, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )


def content_access_allowed(*, user, organization_id: UUID | str | None) -> bool:
    """May `user` read conversation content of that organization right now?"""
    if organization_id is None:
        return False
    return content_access_grants_active(user=user).filter(organization_id=organization_id).exists()


def content_visible_expression(*, user, organization_ref: str = "organization_id") -> Expression:
    """A boolean expression for `.annotate()`: the same rule as `content_access_allowed`, per row,
    for the organization named by `organization_ref` (evaluated in the one query of a list)."""
    if not _is_staff(user):
        return Value(False)
    return Exists(content_access_grants_active(user=user).filter(organization_id=OuterRef(organization_ref)))
