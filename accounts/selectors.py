"""Tenant-scoped reads of accounts data. Missing and foreign ids raise the same `NotFound`."""

import copy
import logging
import threading
import time
from typing import TypeVar
from uuid import UUID, uuid4

from django.core.cache import cache
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import transaction
from django.db.models import Model, QuerySet
from django.utils import timezone

from accounts.errors import NotFound, OrganizationSuspended, PermissionDenied, Unauthenticated
from accounts.models import ApiKey, Invitation, Membership, Organization, hash_api_key

_T = TypeVar("_T", bound=Model)
logger = logging.getLogger(__name__)


def memberships_for_user(*, user) -> list[Membership]:
    return list(
        Membership.objects.filter(user=user).select_related("organization__tier").order_by("organization__name")
    )


def membership_get(*, user, organization_id: UUID | str) -> Membership:
    """The user's membership in that organization, or NotFound (never reveals foreign organizations)."""
    try:
        return Membership.objects.select_related("organization__tier", "user").get(
            user=user, organization_id=organization_id
        )
    except (Membership.DoesNotExist, ValueError, ValidationError):
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
    except (Membership.DoesNotExist, ValueError, ValidationError):
        raise NotFound("Member not found.") from None


# Every API call authenticates its key: the key and its member are kept per process for a few
# seconds, and forgotten by every process as soon as any key, membership, user, organization or tier
# is saved or deleted anywhere (a generation mark in the shared cache, read on each call). Open
# websockets re-check their member (and key) the same way before each turn: membership_refresh.
#
# Redis down (the cache answers misses, config.cache.ResilientRedisCache): a mark that cannot be read
# trusts nothing remembered, so every key is checked against the database until it can be read again
# (entries remembered meanwhile carry no mark and are never trusted later). A change made while the
# mark cannot be written clears this process's memory at once, and a thread keeps writing the new
# mark until it succeeds or KEY_CACHE_SECONDS have passed (by then every entry remembered before the
# change has expired in every process): a key revoked during an outage cannot come back from another
# process's memory when Redis returns. A mark lost with Redis's data (a restart without persistence)
# is replaced by the first process that reads it, which again outdates every remembered entry.
KEY_CACHE_SECONDS = 10.0
_GENERATION = "accounts:auth-generation"
MARK_RETRY_SECONDS = 0.5
_keys: dict[str, tuple[float, str | None, ApiKey, Membership]] = {}
_members: dict[UUID, tuple[float, str | None, Membership]] = {}  # session members (membership_refresh)
_mark_retry_lock = threading.Lock()
_mark_retry_until = 0.0  # monotonic: keep trying to write a new mark until then
_mark_retry_thread: threading.Thread | None = None
_mark_pending = 0  # changes whose mark could not be written, not yet made good by the retry thread


def auth_generation_bump(**_) -> None:
    """Forget every process's remembered keys (connected to saves and deletes of the models they use).

    Written now and again after the transaction commits: a process that reads the database between
    the two (the change not yet visible) would otherwise remember the old state under the new mark.
    """
    _generation_bump()
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(_generation_bump)


def _generation_bump() -> None:
    _keys.clear()
    _members.clear()
    if not _mark_write():
        _mark_retry_start()


def _mark_write() -> bool:
    """A new generation mark in the shared cache; False when the cache could not take it."""
    try:
        return cache.set(_GENERATION, uuid4().hex, None) is not False  # Django's backends answer None
    except Exception as error:  # a cache backend that raises while its server is down (not ResilientRedisCache)
        _cache_unreachable(error)
        return False


def _mark_retry_start() -> None:
    global _mark_retry_until, _mark_retry_thread, _mark_pending
    with _mark_retry_lock:
        _mark_retry_until = time.monotonic() + KEY_CACHE_SECONDS
        _mark_pending += 1
        if _mark_retry_thread is None or not _mark_retry_thread.is_alive():
            _mark_retry_thread = threading.Thread(target=_mark_retry, name="accounts-mark-retry", daemon=True)
            _mark_retry_thread.start()


def _mark_retry() -> None:
    """Write a new mark until one write follows every change that could not write its own."""
    global _mark_retry_thread, _mark_pending
    while True:
        time.sleep(MARK_RETRY_SECONDS)
        with _mark_retry_lock:
            if time.monotonic() > _mark_retry_until:
                _mark_pending, _mark_retry_thread = 0, None
                return
            wanted = _mark_pending
        if _mark_write():
            with _mark_retry_lock:
                if _mark_pending == wanted:
                    _mark_pending, _mark_retry_thread = 0, None
                    return


_warned_at = -1e9


def _cache_unreachable(error: Exception) -> None:
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 10:
        _warned_at = now
        logger.warning("API keys: the cache is unreachable (%s); checking keys against the database.", error.__class__.__name__)


def _generation() -> str | None:
    """The shared generation mark, or None when it cannot be read: then nothing remembered is trusted."""
    try:
        mark = cache.get(_GENERATION)
        if mark is None:
            # Never written, or lost with Redis's data (or Redis is down: then `add` fails too).
            candidate = uuid4().hex
            mark = candidate if cache.add(_GENERATION, candidate, None) else cache.get(_GENERATION)
    except Exception as error:  # a cache backend that raises while its server is down (not ResilientRedisCache)
        _cache_unreachable(error)
        return None
    return mark


def api_key_authenticate(*, secret: str) -> tuple[ApiKey, Membership]:
    """Resolve a bearer secret to its key and the membership it acts as.

    Unknown, revoked and expired keys, and keys whose owner left the organization, all raise
    `Unauthenticated` with a message that says which (the secret itself is never echoed); a valid
    key of a suspended organization raises `OrganizationSuspended` (a `PermissionDenied`), and one of
    an organization whose plan lacks the `api` feature `PermissionDenied`.
    Records when the key was last used (at most once a minute, to keep hot paths cheap).
    """
    if not secret:
        raise Unauthenticated("Missing API key.")
    return _api_key_resolve(hash_api_key(secret))


def _api_key_resolve(hashed: str) -> tuple[ApiKey, Membership]:
    generation = _generation()
    remembered = _keys.get(hashed) if generation is not None else None
    if remembered is not None and remembered[0] > time.monotonic() and remembered[1] == generation:
        key, membership = copy.copy(remembered[2]), copy.copy(remembered[3])
    else:
        key, membership = _api_key_load(hashed)
        _keys[hashed] = (time.monotonic() + KEY_CACHE_SECONDS, generation, key, membership)
        key, membership = copy.copy(key), copy.copy(membership)
    now = timezone.now()
    if key.expires_at is not None and now >= key.expires_at:
        raise Unauthenticated("This API key has expired.")
    if membership.organization.is_suspended:
        raise OrganizationSuspended.of(membership.organization)
    tier = membership.organization.tier
    if not tier.has_feature("api"):
        raise PermissionDenied(f"The {tier.name} plan does not include API access; keys work once the organization's plan does.")
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
        if hashed in _keys:
            _keys[hashed][2].last_used_at = now
    return key, membership


_NO_LONGER_A_MEMBER = "You are no longer a member of this organization."


def membership_refresh(*, membership: Membership, api_key: ApiKey | None = None) -> tuple[Membership, ApiKey | None]:
    """The current state of whom a long-lived connection acts as: (membership, api_key), re-read.

    A websocket calls it before each turn (and on subscribe and stop), so a key revoked, a member
    removed or a plan changed after the socket opened applies to its next frame. Remembered per
    process like the keys of `api_key_authenticate`, and forgotten with them on every change.

    - With a key: the key is authenticated again (revoked, expired → `Unauthenticated`; a plan
      without the `api` feature → `PermissionDenied`).
    - A member no longer in the organization (whichever the credential) → `PermissionDenied`.
    - A session's user who was deactivated → `Unauthenticated`.
    - An organization suspended by staff (whichever the credential) → `OrganizationSuspended`.
    """
    if api_key is not None:
        try:
            key, current = _api_key_resolve(api_key.hashed_secret)
        except Unauthenticated:
            # Removing a member revokes their keys too: say what happened to the member.
            if not Membership.objects.filter(user_id=membership.user_id, organization_id=membership.organization_id).exists():
                raise PermissionDenied(_NO_LONGER_A_MEMBER) from None
            raise
        return current, key
    generation = _generation()
    remembered = _members.get(membership.pk) if generation is not None else None
    if remembered is not None and remembered[0] > time.monotonic() and remembered[1] == generation:
        current = copy.copy(remembered[2])
    else:
        current = Membership.objects.select_related("organization__tier", "user").filter(pk=membership.pk).order_by().first()
        if current is None:
            raise PermissionDenied(_NO_LONGER_A_MEMBER)
        _members[membership.pk] = (time.monotonic() + KEY_CACHE_SECONDS, generation, current)
        current = copy.copy(current)
    if not current.user.is_active:
        raise Unauthenticated("This account is inactive.")
    if current.organization.is_suspended:
        raise OrganizationSuspended.of(current.organization)
    return current, None


def _api_key_load(hashed: str) -> tuple[ApiKey, Membership]:
    # The key alone (by its unique hash), then the member with its organization, tier and user,
    # which the key shares.
    key = ApiKey.objects.filter(hashed_secret=hashed).order_by().first()
    if key is None:
        raise Unauthenticated("Invalid API key.")
    if key.revoked_at is not None:
        raise Unauthenticated("This API key has been revoked.")
    membership = (
        Membership.objects.select_related("organization__tier", "user")
        .filter(user_id=key.user_id, organization_id=key.organization_id)
        .order_by()
        .first()
    )
    if membership is None:
        raise Unauthenticated("This API key's user is no longer a member of its organization.")
    if not membership.user.is_active:
        raise Unauthenticated("This API key's user is inactive.")
    key.organization, key.user = membership.organization, membership.user
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


def organizations_for_user(*, user) -> list[Organization]:
    """The organizations the user belongs to (for the switcher), personal first, then by name."""
    return list(Organization.objects.for_user(user).select_related("tier").order_by("-is_personal", "name"))


def tenant_get(
    queryset: QuerySet[_T], *, organization: Organization | UUID | str, object_id, message: str = "Not found."
) -> _T:
    """One row of a tenant-owned queryset by id, inside one organization.

    The generic form of `<entity>_get_for_member`: missing, malformed and foreign ids all raise the
    same `NotFound(message)`. `queryset` is any queryset of a model with an `organization` FK.
    """
    organization_id = getattr(organization, "pk", organization)
    try:
        return queryset.get(organization_id=organization_id, pk=object_id)
    except (ObjectDoesNotExist, ValueError, ValidationError):
        raise NotFound(message) from None


def invitations_for_organization(*, organization: Organization, pending_only: bool = True) -> list[Invitation]:
    """The organization's invitations, newest first; by default only those not accepted and not expired."""
    invitations = Invitation.objects.filter(organization=organization).select_related("invited_by")
    if pending_only:
        invitations = invitations.filter(accepted_at__isnull=True, expires_at__gt=timezone.now())
    return list(invitations.order_by("-created_at"))


def invitation_get_by_token(*, token: str) -> Invitation:
    """The invitation a link points at (for the accept page); NotFound when the token is unknown."""
    try:
        return Invitation.objects.select_related("organization", "invited_by").get(token=token or "")
    except Invitation.DoesNotExist:
        raise NotFound("This invitation link is not valid. Ask for a new invitation.") from None


def api_keys_for_member(*, membership: Membership, include_revoked: bool = True) -> list[ApiKey]:
    """The API keys this member may see and revoke: their own, or every key of the organization for
    owners and admins. Newest first."""
    keys = ApiKey.objects.for_organization(membership.organization_id).select_related("user")
    if not membership.is_admin:
        keys = keys.filter(user_id=membership.user_id)
    if not include_revoked:
        keys = keys.filter(revoked_at__isnull=True)
    return list(keys.order_by("-created_at"))


def api_key_get_for_member(*, membership: Membership, key_id: UUID | str) -> ApiKey:
    keys = ApiKey.objects.all() if membership.is_admin else ApiKey.objects.filter(user_id=membership.user_id)
    return tenant_get(
        keys.select_related("user"),
        organization=membership.organization_id,
        object_id=key_id,
        message="API key not found.",
    )
