"""Tenant-scoped reads of accounts data. Missing and foreign ids raise the same `NotFound`."""

from uuid import UUID

from django.utils import timezone

from accounts.errors import NotFound, Unauthenticated
from accounts.models import ApiKey, Membership, Organization, hash_api_key


def memberships_for_user(*, user) -> list[Membership]:
    return list(Membership.objects.filter(user=user).select_related("organization__tier").order_by("organization__name"))


def membership_get(*, user, organization_id: UUID | str) -> Membership:
    """The user's membership in that organization, or NotFound (never reveals foreign organizations)."""
    try:
        return Membership.objects.select_related("organization__tier", "user").get(
            user=user, organization_id=organization_id
        )
    except (Membership.DoesNotExist, ValueError):
        raise NotFound("Organization not found.") from None


def membership_default(*, user) -> Membership | None:
    """The user's first membership (personal organization first), used when nothing is chosen."""
    return (
        Membership.objects.filter(user=user)
        .select_related("organization__tier", "user")
        .order_by("-organization__is_personal", "created_at")
        .first()
    )


def organization_members(*, organization: Organization) -> list[Membership]:
    return list(Membership.objects.for_organization(organization).select_related("user").order_by("created_at"))


def member_get_in_organization(*, organization: Organization, membership_id: UUID | str) -> Membership:
    try:
        return Membership.objects.for_organization(organization).select_related("user").get(id=membership_id)
    except (Membership.DoesNotExist, ValueError):
        raise NotFound("Member not found.") from None


def api_key_authenticate(*, secret: str) -> tuple[ApiKey, Membership]:
    """Resolve a bearer secret to its key and the membership it acts as.

    Unknown, revoked and expired keys, and keys whose owner left the organization, all raise
    `Unauthenticated` with a message that says which (the secret itself is never echoed).
    Records when the key was last used (at most once a minute, to keep hot paths cheap).
    """
    if not secret:
        raise Unauthenticated("Missing API key.")
    try:
        key = ApiKey.objects.select_related("organization__tier", "user").get(hashed_secret=hash_api_key(secret))
    except ApiKey.DoesNotExist:
        raise Unauthenticated("Invalid API key.") from None
    if key.revoked_at is not None:
        raise Unauthenticated("This API key has been revoked.")
    now = timezone.now()
    if key.expires_at is not None and now >= key.expires_at:
        raise Unauthenticated("This API key has expired.")
    if not key.user.is_active:
        raise Unauthenticated("This API key's user is inactive.")
    try:
        membership = Membership.objects.select_related("organization__tier", "user").get(
            user=key.user, organization=key.organization
        )
    except Membership.DoesNotExist:
        raise Unauthenticated("This API key's user is no longer a member of its organization.") from None
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key, membership


def bearer_secret(authorization_header: str | bytes | None) -> str | None:
    """The secret of an `Authorization: Bearer <secret>` header, or None when there is none."""
    if not authorization_header:
        return None
    if isinstance(authorization_header, bytes):
        authorization_header = authorization_header.decode("latin-1")
    scheme, _, secret = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None
