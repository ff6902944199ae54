import hashlib
import secrets
import uuid
from decimal import Decimal

import pgtrigger
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra):
        if not email:
            raise ValueError("An e-mail address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with an e-mail address; belongs to organizations through memberships."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        return self.name or self.email

    def get_short_name(self) -> str:
        return self.name or self.email.split("@")[0]


class Tier(models.Model):
    """A plan with its limits. Rows are data: seeded by a migration, edited in the admin."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    monthly_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("1"))
    requests_per_minute = models.PositiveIntegerField(default=10)
    tokens_per_minute = models.PositiveIntegerField(default=20_000)
    allowed_models = models.JSONField(default=list, blank=True, help_text="Model aliases this tier may use.")
    max_message_chars = models.PositiveIntegerField(default=8_000)
    max_output_tokens = models.PositiveIntegerField(default=1_024)
    features = models.JSONField(default=list, blank=True, help_text="Feature flags, e.g. tools, api.")

    class Meta:
        ordering = ["monthly_budget_usd"]

    def __str__(self) -> str:
        return self.name

    def allows_model(self, alias: str) -> bool:
        return alias in self.allowed_models

    def has_feature(self, feature: str) -> bool:
        return feature in self.features


class OrganizationQuerySet(models.QuerySet):
    def for_user(self, user):
        return self.filter(memberships__user=user)


class Organization(models.Model):
    """The tenant. Every tenant-owned row carries one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=150)
    slug = models.SlugField(max_length=80, unique=True)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="organizations")
    is_personal = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    # Suspended by staff: members can log in, but every turn, API key and websocket is refused.
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspended_reason = models.CharField(max_length=500, blank=True)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_suspended(self) -> bool:
        return self.suspended_at is not None


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class MembershipQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)


class Membership(models.Model):
    """A user in an organization with a role. What requests and sockets carry as 'the member'."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="unique_membership")]
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def tier(self) -> Tier:
        return self.organization.tier

    @property
    def is_admin(self) -> bool:
        """Owners and admins manage the organization."""
        return self.role in (Role.OWNER, Role.ADMIN)

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER


def _new_invitation_token() -> str:
    return secrets.token_urlsafe(32)


class Invitation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    token = models.CharField(max_length=64, unique=True, default=_new_invitation_token, editable=False)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} → {self.organization}"

    @property
    def is_expired(self) -> bool:
        return timezone.now() >= self.expires_at

    @property
    def is_pending(self) -> bool:
        return self.accepted_at is None and not self.is_expired


API_KEY_PREFIX = "pk_"


def hash_api_key(secret: str) -> str:
    # Keys are 256-bit random secrets, so a fast hash is enough (no brute force to slow down).
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)


class ApiKey(models.Model):
    """A program's credential for one organization, acting as the member who made it.

    Only the SHA-256 of the secret is stored; `prefix` (the first characters) lets people tell
    keys apart in lists.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False)
    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate_secret() -> str:
        return API_KEY_PREFIX + secrets.token_urlsafe(32)

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or timezone.now() < self.expires_at


# --- Oversight --------------------------------------------------------------------------------


class ActorType(models.TextChoices):
    USER = "user", "User"
    STAFF = "staff", "Staff user"
    API_KEY = "api_key", "API key"
    SYSTEM = "system", "System (task or command)"
    ANONYMOUS = "anonymous", "Anonymous (e.g. a failed log-in)"


class AuditEventQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)

    def update(self, **kwargs):
        raise TypeError("Audit events are append-only.")

    def delete(self):
        raise TypeError("Audit events are append-only.")


class AuditEvent(models.Model):
    """Who did what, when, to which object: one row per security- or money-relevant action.

    Written by the service that makes the change, in its transaction (accounts.audit.audit_record).
    Append-only: the model refuses save-over and delete, and on PostgreSQL a trigger refuses UPDATE
    and DELETE. Each row's `hash` covers its fields and the previous row of the same chain (one
    chain per organization, and one for events of no organization), so `manage.py audit_verify`
    detects any rewrite.

    References are kept without database constraints (and with their labels copied) so an event
    outlives the user, key or organization it names.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    sequence = models.PositiveBigIntegerField(help_text="Position in its chain, from 1.")
    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor_user = models.ForeignKey(
        User, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    actor_api_key = models.ForeignKey(
        ApiKey, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=255, blank=True, help_text="E-mail, key prefix or task name.")
    action = models.CharField(max_length=64, db_index=True, help_text="Dotted name, e.g. api_key.create.")
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=255, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text="{field: [before, after]}; never secrets.")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    request_id = models.CharField(max_length=100, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-sequence"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="audit_org_created"),
            models.Index(fields=["organization", "sequence"], name="audit_org_sequence"),
            models.Index(fields=["actor_user", "-created_at"], name="audit_actor_created"),
            # The staff admin's exact searches (a request's or an object's whole trail).
            models.Index(fields=["request_id"], name="audit_request_id"),
            models.Index(fields=["target_id"], name="audit_target_id"),
        ]
        triggers = [
            pgtrigger.Protect(name="audit_append_only", operation=pgtrigger.Update | pgtrigger.Delete),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {self.actor_label or self.actor_type}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are append-only.")


class AuditChainHead(models.Model):
    """The last link of one chain: appends lock this row, so a chain never forks under concurrency.

    `chain` is the organization's id, or "platform" for events of no organization. After a
    retention purge, `purged_through` / `purged_hash` are the sequence and hash of the last purged
    row: the first kept row must link to it.
    """

    chain = models.CharField(max_length=40, primary_key=True)
    sequence = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, blank=True)
    purged_through = models.PositiveBigIntegerField(default=0)
    purged_hash = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"{self.chain} at {self.sequence}"


class ContentAccessGrant(models.Model):
    """Break-glass: one staff user may read one organization's conversations until `expires_at`.

    Asked for with a written reason; recorded as a `staff.content_access` event in that
    organization's audit log (accounts.content_access.content_access_request).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    staff_user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="content_access_grants")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["staff_user", "organization", "expires_at"], name="grant_lookup")]

    def __str__(self) -> str:
        return f"{self.staff_user} → {self.organization} until {self.expires_at:%Y-%m-%d %H:%M}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and timezone.now() < self.expires_at
