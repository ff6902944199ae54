"""Writes of accounts data: one function per use case."""

from django.db import transaction
from django.utils.text import slugify

from accounts.models import ApiKey, Membership, Organization, Role, Tier, User, hash_api_key

DEFAULT_TIER_SLUG = "free"


def _unique_slug(name: str) -> str:
    base = slugify(name)[:60] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def organization_create(*, name: str, owner: User, tier: Tier | None = None, is_personal: bool = False) -> Organization:
    tier = tier or Tier.objects.get(slug=DEFAULT_TIER_SLUG)
    organization = Organization.objects.create(name=name, slug=_unique_slug(name), tier=tier, is_personal=is_personal)
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    return organization


def organization_create_personal(*, user: User) -> Organization:
    """Every new user gets a personal organization on the free tier, as its owner."""
    label = user.name or user.email.split("@")[0]
    return organization_create(name=f"{label}'s workspace", owner=user, is_personal=True)


def api_key_create(*, membership: Membership, name: str, expires_at=None) -> tuple["ApiKey", str]:
    """Create a key acting as this member. Returns the key and its secret, shown once."""
    secret = ApiKey.generate_secret()
    key = ApiKey.objects.create(
        organization=membership.organization,
        user=membership.user,
        name=name,
        prefix=secret[:10],
        hashed_secret=hash_api_key(secret),
        expires_at=expires_at,
    )
    return key, secret
