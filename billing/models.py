"""Money: prices, the immutable ledger, budgets with their per-period counters, reservations.

Amounts are Decimal US dollars. Budget periods are calendar months in UTC (see billing.periods).
"""

import uuid
from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization, Tier

MILLION = Decimal(1_000_000)
# Costs keep 12 decimal places: a token at $0.000001 per million is still representable exactly.
COST = {"max_digits": 24, "decimal_places": 12}
UNIT_PRICE = {"max_digits": 14, "decimal_places": 6}


class Price(models.Model):
    """A model's list price per million tokens, in effect from `effective_at` until the next row.

    Pricing fails closed: a model with no row in effect cannot be used, unless a row marks it free.
    """

    model = models.CharField(max_length=100, db_index=True, help_text="Model alias, e.g. gpt-5.2-instant.")
    effective_at = models.DateTimeField(help_text="When this price takes effect (UTC).")
    input_per_mtok = models.DecimalField(**UNIT_PRICE, default=Decimal("0"))
    output_per_mtok = models.DecimalField(**UNIT_PRICE, default=Decimal("0"))
    cached_input_per_mtok = models.DecimalField(
        **UNIT_PRICE, null=True, blank=True, help_text="Empty: cached input costs the same as input."
    )
    is_free = models.BooleanField(default=False, help_text="Staff-marked free: usable and billed at zero.")
    source = models.CharField(max_length=300, blank=True, help_text="Where the price comes from.")
    source_date = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-effective_at"]
        constraints = [models.UniqueConstraint(fields=["model", "effective_at"], name="unique_price_per_effective_at")]

    def __str__(self) -> str:
        if self.is_free:
            return f"{self.model}: free from {self.effective_at:%Y-%m-%d}"
        return f"{self.model}: {self.input_per_mtok}/{self.output_per_mtok} per Mtok from {self.effective_at:%Y-%m-%d}"

    @property
    def input_unit(self) -> Decimal:
        return Decimal(0) if self.is_free else self.input_per_mtok

    @property
    def output_unit(self) -> Decimal:
        return Decimal(0) if self.is_free else self.output_per_mtok

    @property
    def cached_input_unit(self) -> Decimal:
        if self.is_free:
            return Decimal(0)
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    def cost(self, *, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> Decimal:
        return (
            Decimal(input_tokens) * self.input_unit
            + Decimal(output_tokens) * self.output_unit
            + Decimal(cached_input_tokens) * self.cached_input_unit
        ) / MILLION


class LedgerEntryQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)

    def update(self, **kwargs):
        raise TypeError("Ledger entries are immutable.")

    def delete(self):
        raise TypeError("Ledger entries are immutable.")


class LedgerKind(models.TextChoices):
    USAGE = "usage", "Usage"
    CREDIT = "credit", "Credit"
    REFUND = "refund", "Refund"


class LedgerEntry(models.Model):
    """One provider call, billed once. Immutable: `request_id` is the call's unique id.

    Credits and refunds granted by staff are compensating rows of their own (`kind`, a negative
    `cost`, the reason in `note`): old rows never change, and every sum of `cost` accounts for them.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    membership = models.ForeignKey(Membership, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user_email = models.EmailField(blank=True, help_text="Kept when the membership is gone.")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # Values, not foreign keys: billing does not import conversations.
    conversation_id = models.UUIDField(null=True, blank=True)
    message_id = models.UUIDField(null=True, blank=True)
    turn_request_id = models.CharField(max_length=200, blank=True, db_index=True)
    request_id = models.CharField(max_length=255, unique=True)
    provider = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=100)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    input_per_mtok = models.DecimalField(**UNIT_PRICE)
    output_per_mtok = models.DecimalField(**UNIT_PRICE)
    cached_input_per_mtok = models.DecimalField(**UNIT_PRICE)
    cost = models.DecimalField(**COST)
    estimated = models.BooleanField(default=False, help_text="Tokens counted by Parley: the provider reported none.")
    kind = models.CharField(max_length=8, choices=LedgerKind.choices, default=LedgerKind.USAGE)
    note = models.CharField(max_length=500, blank=True, help_text="A credit's or refund's reason.")
    created_at = models.DateTimeField(default=timezone.now)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["organization", "created_at"], name="ledger_org_created"),
            models.Index(fields=["organization", "membership", "created_at"], name="ledger_org_member_created"),
            # Platform-wide day ranges: the usage rollup's tail and the staff console.
            models.Index(fields=["created_at"], name="ledger_created"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.model} ${self.cost}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Ledger entries are immutable.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Ledger entries are immutable.")


class Budget(models.Model):
    """A monthly limit. Without `membership`: the organization's custom override of its tier's budget
    (set by staff). With one: that member's own limit (set by the organization's owners/admins)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    monthly_limit_usd = models.DecimalField(max_digits=12, decimal_places=4)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization"], condition=Q(membership__isnull=True), name="unique_org_budget"
            ),
            models.UniqueConstraint(
                fields=["organization", "membership"], condition=Q(membership__isnull=False), name="unique_member_budget"
            ),
        ]

    def __str__(self) -> str:
        who = self.membership.user.email if self.membership_id else "organization"
        return f"{self.organization} / {who}: ${self.monthly_limit_usd}"


class PeriodSpend(models.Model):
    """Spend and open reservations of one scope (the organization, or one member) in one period.

    A turn reserves with one conditional UPDATE (the amount is added only where it still fits the
    limit), so concurrent turns cannot both pass a check that only one fits (billing.reservations).
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    period_start = models.DateField()
    spent = models.DecimalField(**COST, default=Decimal(0))
    reserved = models.DecimalField(**COST, default=Decimal(0))
    alerted_75_at = models.DateTimeField(null=True, blank=True)
    alerted_90_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period_start"], condition=Q(membership__isnull=True), name="unique_org_period"
            ),
            models.UniqueConstraint(
                fields=["organization", "membership", "period_start"],
                condition=Q(membership__isnull=False),
                name="unique_member_period",
            ),
        ]

    def __str__(self) -> str:
        scope = f"member {self.membership_id}" if self.membership_id else "organization"
        return f"{self.organization_id} {scope} {self.period_start:%Y-%m}: spent {self.spent}, reserved {self.reserved}"


class ReservationStatus(models.TextChoices):
    OPEN = "open", "Open"
    SETTLED = "settled", "Settled"
    EXPIRED = "expired", "Expired (released by the sweeper)"
    RECOVERED = "recovered", "Recovered (its process died: billed from the usage record)"


class Reservation(models.Model):
    """The worst-case cost of a turn, held against its budgets until it is settled or expires."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    membership = models.ForeignKey(Membership, on_delete=models.SET_NULL, null=True, related_name="+")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    request_id = models.CharField(max_length=200, unique=True)
    model = models.CharField(max_length=100)
    prompt_tokens = models.PositiveIntegerField(default=0)
    max_output_tokens = models.PositiveIntegerField(default=0)
    amount = models.DecimalField(**COST)
    # The counters this reservation is held on (the organization's, and the member's).
    org_counter = models.ForeignKey(PeriodSpend, on_delete=models.CASCADE, related_name="+")
    member_counter = models.ForeignKey(PeriodSpend, on_delete=models.CASCADE, null=True, related_name="+")
    status = models.CharField(max_length=10, choices=ReservationStatus.choices, default=ReservationStatus.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    # Written about once a second by the process streaming the turn (conversations.engine): the
    # provider calls it has made and the one streaming now, with the tokens so far. A reservation
    # whose heartbeat stops is settled from this record (billing.settlement.reservation_settle_recorded).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    recorded = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="reservation_open_expiry"),
            models.Index(
                fields=["heartbeat_at"], name="reservation_open_heartbeat", condition=Q(status="open")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}: ${self.amount} ({self.status})"


class RateLimitPolicy(models.Model):
    """Per-member and per-API-key rate limits of a tier. Empty: the same as the tier's organization limit."""

    tier = models.OneToOneField(Tier, on_delete=models.CASCADE, related_name="rate_limit_policy")
    member_requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    member_tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    api_key_requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    api_key_tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "rate limit policies"

    def __str__(self) -> str:
        return f"Rate limits of {self.tier}"


class DailyUsage(models.Model):
    """Ledger totals per day, organization, member and model, rolled up by a periodic task."""

    day = models.DateField()
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    membership = models.ForeignKey(Membership, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=100)
    calls = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(**COST, default=Decimal(0))

    class Meta:
        verbose_name_plural = "daily usage"
        indexes = [models.Index(fields=["organization", "day"], name="dailyusage_org_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.organization_id} {self.model}: ${self.cost}"


class RollupState(models.Model):
    """Singleton: every day before `rolled_through` is in DailyUsage; later days are read from the ledger."""

    rolled_through = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"rolled through {self.rolled_through}"
