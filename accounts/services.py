"""Writes of accounts data: one function per use case.

Every function is keyword-only. Ids from outside (URLs, API bodies) are looked up inside the acting
member's organization, so a foreign id raises the same `NotFound` as a missing one. Role rules raise
`PermissionDenied`, bad input raises `InvalidInput`.

Each change writes its audit event (accounts.audit) inside the same transaction, after the write
succeeded: a refused or failing change leaves no event, and an event cannot commit without its
change. Who acted comes from the bound audit context (the session user, the API key, a task).
"""

from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from accounts.audit import audit_actor, audit_context, audit_record, changes_between
from accounts.errors import InvalidInput, NotFound, PermissionDenied
from accounts.middleware import SESSION_KEY
from accounts.models import ApiKey, Invitation, Membership, Organization, Role, Tier, User, hash_api_key
from accounts.selectors import membership_get

DEFAULT_TIER_SLUG = "free"
INVITATION_DAYS = 7
NAME_MAX = 150
API_KEY_NAME_MAX = 100


def _unique_slug(name: str) -> str:
    base = slugify(name)[:60] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _clean_name(name: str, *, what: str, max_length: int) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise InvalidInput(f"The {what} name cannot be empty.")
    if len(name) > max_length:
        raise InvalidInput(f"The {what} name can be at most {max_length} characters long.")
    return name


def _clean_role(role: str) -> str:
    if role not in Role.values:
        raise InvalidInput(f"Unknown role {role!r}; choose one of: {', '.join(Role.values)}.")
    return role


def _require_admin(membership: Membership) -> None:
    if not membership.is_admin:
        raise PermissionDenied("Only owners and admins can manage this organization.")


def _lock_owners(organization_id) -> list:
    """Lock the organization's owner rows, always in the same order, and return their ids.

    Role changes and removals take this lock first, so two concurrent demotions cannot both see
    "another owner exists", and two owners demoting each other cannot deadlock.
    """
    return list(
        Membership.objects.select_for_update()
        .filter(organization_id=organization_id, role=Role.OWNER)
        .order_by("pk")
        .values_list("id", flat=True)
    )


def _locked_member(membership: Membership, target_id: UUID | str) -> tuple[Membership, list]:
    """The target membership in the actor's organization (locked) and the locked owners' ids."""
    owner_ids = _lock_owners(membership.organization_id)
    try:
        target = (
            Membership.objects.select_for_update()
            .select_related("user")
            .get(organization_id=membership.organization_id, id=target_id)
        )
    except (Membership.DoesNotExist, ValueError, ValidationError):
        raise NotFound("Member not found.") from None
    return target, owner_ids


# --- Organizations ----------------------------------------------------------------------------


@transaction.atomic
def organization_create(*, name: str, owner: User, tier: Tier | None = None, is_personal: bool = False) -> Organization:
    name = _clean_name(name, what="organization", max_length=NAME_MAX)
    tier = tier or Tier.objects.get(slug=DEFAULT_TIER_SLUG)
    organization = Organization.objects.create(name=name, slug=_unique_slug(name), tier=tier, is_personal=is_personal)
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit_record(
        "organization.create",
        organization=organization,
        target=organization,
        changes=changes_between(
            {},
            {
                "name": name,
                "slug": organization.slug,
                "tier": tier.slug,
                "is_personal": is_personal,
                "owner": owner.email,
            },
        ),
    )
    return organization


def organization_create_personal(*, user: User) -> Organization:
    """Every new user gets a personal organization on the free tier, as its owner.

    Created while the user signs up (nobody is logged in yet): the event names the new user as the
    actor, unless someone else (a staff user, a task) is the bound actor."""
    label = user.name or user.email.split("@")[0]
    context = audit_context()
    if not getattr(context.user, "is_authenticated", False) and context.api_key is None and not context.system:
        with audit_actor(user=user):
            return organization_create(name=f"{label}'s workspace", owner=user, is_personal=True)
    return organization_create(name=f"{label}'s workspace", owner=user, is_personal=True)


@transaction.atomic
def organization_rename(*, membership: Membership, name: str) -> Organization:
    _require_admin(membership)
    name = _clean_name(name, what="organization", max_length=NAME_MAX)
    organization = Organization.objects.select_for_update().get(pk=membership.organization_id)
    changes = changes_between({"name": organization.name}, {"name": name})
    organization.name = name
    organization.save(update_fields=["name"])
    membership.organization.name = name
    if changes:  # the same name again changes nothing
        audit_record("organization.rename", organization=organization, target=organization, changes=changes)
    return organization


def organization_switch(*, request_or_session, user: User, organization_id: UUID | str) -> Membership:
    """Make that organization the current one of this browser session.

    Raises NotFound (and leaves the session alone) when the user is not a member.
    """
    membership = membership_get(user=user, organization_id=organization_id)
    session = getattr(request_or_session, "session", request_or_session)
    session[SESSION_KEY] = str(membership.organization_id)
    if hasattr(request_or_session, "session"):
        request_or_session.membership = membership
    return membership


# --- Invitations ------------------------------------------------------------------------------


def invitation_accept_path(invitation: Invitation) -> str:
    return reverse(
        "invitation_accept", kwargs={"organization_id": invitation.organization_id, "token": invitation.token}
    )


def _site_url() -> str:
    return (getattr(settings, "PARLEY_SITE_URL", "") or "http://127.0.0.1:8000").rstrip("/")


def _send_invitation_email(invitation_id: UUID, base_url: str | None) -> None:
    invitation = Invitation.objects.select_related("organization", "invited_by").get(pk=invitation_id)
    context = {
        "invitation": invitation,
        "organization": invitation.organization,
        "inviter": invitation.invited_by,
        "accept_url": (base_url or _site_url()).rstrip("/") + invitation_accept_path(invitation),
    }
    subject = f"You are invited to join {invitation.organization.name} on Parley"
    body = render_to_string("accounts/email/invitation.txt", context)
    send_mail(subject, body, None, [invitation.email])


@transaction.atomic
def invitation_create(
    *, membership: Membership, email: str, role: str = Role.MEMBER, base_url: str | None = None
) -> Invitation:
    """Invite an e-mail address into the member's organization; the e-mail goes out after commit.

    `base_url` (scheme and host, e.g. from the request) builds the link; `PARLEY_SITE_URL` otherwise.
    A new invitation for an address with a pending one replaces it (a fresh link and expiry).
    """
    _require_admin(membership)
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput("Enter a valid e-mail address.") from None
    role = _clean_role(role)
    if role == Role.OWNER and not membership.is_owner:
        raise PermissionDenied("Only owners can invite new owners.")
    organization_id = membership.organization_id
    if Membership.objects.filter(organization_id=organization_id, user__email__iexact=email).exists():
        raise InvalidInput(f"{email} is already a member of this organization.")
    Invitation.objects.filter(organization_id=organization_id, email__iexact=email, accepted_at__isnull=True).delete()
    invitation = Invitation.objects.create(
        organization_id=organization_id,
        email=email,
        role=role,
        invited_by=membership.user,
        expires_at=timezone.now() + timedelta(days=INVITATION_DAYS),
    )
    audit_record(
        "membership.invite",
        organization=organization_id,
        target=invitation,
        target_label=email,
        changes=changes_between({}, {"email": email, "role": role}),
    )
    transaction.on_commit(lambda: _send_invitation_email(invitation.id, base_url))
    return invitation


def _user_owns_email(user: User, email: str) -> bool:
    """The invited address must be the user's primary address or one of their verified ones."""
    from allauth.account.models import EmailAddress

    if user.email.lower() == email.lower():
        return True
    return EmailAddress.objects.filter(user=user, email__iexact=email, verified=True).exists()


@transaction.atomic
def invitation_accept(*, user: User, token: str, organization_id: UUID | str | None = None) -> Membership:
    """Join the invitation's organization. `organization_id`, when given (it is in the e-mailed link),
    must be the invitation's own organization: a token of one organization cannot join another."""
    try:
        invitation = Invitation.objects.select_for_update().select_related("organization").get(token=token or "")
    except Invitation.DoesNotExist:
        raise NotFound("This invitation link is not valid. Ask for a new invitation.") from None
    if organization_id is not None and str(invitation.organization_id) != str(organization_id):
        raise InvalidInput("This invitation is for a different organization.", code="invitation_mismatch")
    if invitation.accepted_at is not None:
        raise InvalidInput("This invitation has already been accepted.", code="invitation_used")
    if invitation.is_expired:
        raise InvalidInput(
            "This invitation has expired. Ask an admin of the organization for a new one.", code="invitation_expired"
        )
    if not _user_owns_email(user, invitation.email):
        raise PermissionDenied(
            f"This invitation was sent to {invitation.email}; log in with that address to accept it.",
            code="invitation_wrong_user",
        )
    if Membership.objects.filter(user=user, organization_id=invitation.organization_id).exists():
        raise InvalidInput(f"You are already a member of {invitation.organization.name}.")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                user=user, organization_id=invitation.organization_id, role=invitation.role
            )
    except IntegrityError:
        raise InvalidInput(f"You are already a member of {invitation.organization.name}.") from None
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        "membership.join",
        organization=invitation.organization_id,
        target=membership,
        target_label=user.email,
        changes=changes_between({}, {"role": membership.role, "invitation": str(invitation.id)}),
        user=user,  # whoever the context says, the one joining is the one accepting
    )
    return Membership.objects.select_related("organization__tier", "user").get(pk=membership.pk)


@transaction.atomic
def invitation_revoke(*, membership: Membership, invitation_id: UUID | str) -> None:
    _require_admin(membership)
    try:
        invitation = Invitation.objects.select_for_update().get(
            organization_id=membership.organization_id, id=invitation_id
        )
    except (Invitation.DoesNotExist, ValueError, ValidationError):
        raise NotFound("Invitation not found.") from None
    if invitation.accepted_at is not None:
        raise InvalidInput("This invitation has already been accepted; remove the member instead.")
    if invitation.role == Role.OWNER and not membership.is_owner:
        raise PermissionDenied("Only owners can revoke an invitation to become an owner.")
    invitation_id = invitation.id
    invitation.delete()
    audit_record(
        "invitation.revoke",
        organization=membership.organization_id,
        target_type="invitation",
        target_id=invitation_id,
        target_label=invitation.email,
        changes=changes_between({"email": invitation.email, "role": invitation.role}, {}),
    )


# --- Members ----------------------------------------------------------------------------------


@transaction.atomic
def membership_change_role(*, membership: Membership, target_id: UUID | str, role: str) -> Membership:
    _require_admin(membership)
    role = _clean_role(role)
    target, owner_ids = _locked_member(membership, target_id)
    if not membership.is_owner and (role == Role.OWNER or target.role == Role.OWNER):
        raise PermissionDenied("Only owners can make someone an owner or change an owner's role.")
    if target.role == role:
        return target
    if target.role == Role.OWNER and owner_ids == [target.id]:
        raise PermissionDenied("An organization needs at least one owner: make someone else an owner first.")
    changes = changes_between({"role": target.role}, {"role": role})
    target.role = role
    target.save(update_fields=["role"])
    if target.id == membership.id:
        membership.role = role
    audit_record(
        "membership.role_change",
        organization=target.organization_id,
        target=target,
        target_label=target.user.email,
        changes=changes,
    )
    return target


@transaction.atomic
def membership_remove(*, membership: Membership, target_id: UUID | str) -> None:
    """Remove a member, or leave the organization (target is the actor's own membership).

    The removed member's API keys for this organization are revoked.
    """
    target, owner_ids = _locked_member(membership, target_id)
    leaving = target.id == membership.id
    if not leaving:
        _require_admin(membership)
        if target.role == Role.OWNER and not membership.is_owner:
            raise PermissionDenied("Only owners can remove an owner.")
    if target.role == Role.OWNER and owner_ids == [target.id]:
        raise PermissionDenied(
            "An organization needs at least one owner: make someone else an owner before "
            + ("leaving." if leaving else "removing this one.")
        )
    revoked = ApiKey.objects.filter(
        organization_id=target.organization_id, user_id=target.user_id, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    target_id = target.id
    target.delete()
    audit_record(
        "membership.remove",
        organization=target.organization_id,
        target_type="membership",
        target_id=target_id,
        target_label=target.user.email,
        changes={**changes_between({"role": target.role}, {"role": None}), "api_keys_revoked": [0, revoked]},
    )


# --- API keys ---------------------------------------------------------------------------------


@transaction.atomic
def api_key_create(*, membership: Membership, name: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key acting as this member. Returns the key and its secret, shown once."""
    name = _clean_name(name, what="key", max_length=API_KEY_NAME_MAX)
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            raise InvalidInput("The expiry must include a time zone.")
        if expires_at <= timezone.now():
            raise InvalidInput("The expiry must be in the future.")
    secret = ApiKey.generate_secret()
    key = ApiKey.objects.create(
        organization=membership.organization,
        user=membership.user,
        name=name,
        prefix=secret[:10],
        hashed_secret=hash_api_key(secret),
        expires_at=expires_at,
    )
    audit_record(  # the prefix identifies the key; the secret and its hash never go into an event
        "api_key.create",
        organization=key.organization_id,
        target=key,
        changes=changes_between({}, {"name": key.name, "prefix": key.prefix, "expires_at": key.expires_at}),
    )
    return key, secret


@transaction.atomic
def api_key_revoke(*, membership: Membership, key_id: UUID | str) -> ApiKey:
    """Revoke a key. Members revoke their own keys; owners and admins any key of the organization.
    Revoking a revoked key changes nothing."""
    keys = ApiKey.objects.select_for_update().filter(organization_id=membership.organization_id)
    if not membership.is_admin:
        keys = keys.filter(user_id=membership.user_id)
    try:
        key = keys.get(id=key_id)
    except (ApiKey.DoesNotExist, ValueError, ValidationError):
        raise NotFound("API key not found.") from None
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(
            "api_key.revoke",
            organization=key.organization_id,
            target=key,
            changes=changes_between({"revoked_at": None}, {"revoked_at": key.revoked_at}),
        )
    return key
