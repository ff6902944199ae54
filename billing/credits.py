"""Credits and refunds granted by staff: compensating ledger rows, never edits of old ones.

A credit is a LedgerEntry of its own (`kind` credit or refund, a negative `cost`, the reason in
`note`, no model and no member). It lowers the organization's counter of the current period
(PeriodSpend.spent) in the same transaction, so the budget check (spend + reservations against the
limit) has that much more room at once, and the counter keeps equal to the period's ledger sum.
A credit larger than the period's spend leaves the counter below zero until usage catches up: the
credit is used this month, as the ledger says. It is the organization's: members' own budgets
(their own counters) do not move.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.audit import audit_record
from accounts.errors import InvalidInput
from accounts.models import Organization, User
from billing.models import COST, LedgerEntry, LedgerKind, PeriodSpend
from billing.periods import period_start

ZERO = Decimal(0)
# A credit row's model: it is not a model's call. The usage pages list credits by their reason.
CREDIT_MODEL = ""
CREDIT_KINDS = (LedgerKind.CREDIT, LedgerKind.REFUND)
REASON_MAX = LedgerEntry._meta.get_field("note").max_length
_PLACES = COST["decimal_places"]
_INTEGER_DIGITS = COST["max_digits"] - COST["decimal_places"]


def _checked_amount(amount: Decimal) -> Decimal:
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidInput("The amount is a decimal number of US dollars.", param="amount")
    if amount <= 0:
        raise InvalidInput("The amount must be more than zero.", param="amount")
    sign, digits, exponent = amount.as_tuple()
    if -exponent > _PLACES:
        raise InvalidInput(f"The amount has at most {_PLACES} decimal places.", param="amount")
    if amount.adjusted() + 1 > _INTEGER_DIGITS:
        raise InvalidInput("The amount is too large.", param="amount")
    return amount


def ledger_credit(
    *,
    organization: Organization,
    amount: Decimal,
    reason: str,
    kind: str = LedgerKind.CREDIT,
    staff_user: User | None = None,
) -> LedgerEntry:
    """Grant the organization a credit (or a refund) of `amount` US dollars, with a reason.

    Writes one compensating LedgerEntry (cost = -amount), lowers this period's organization counter,
    and records `ledger.credit` / `ledger.refund` (amount and reason), all in one transaction.
    `staff_user`: who grants it (default: the bound audit actor, e.g. the admin's request user).
    Raises InvalidInput for an amount that is not a positive Decimal at the ledger's precision,
    an empty or too long reason, or an unknown kind.
    """
    if kind not in CREDIT_KINDS:
        raise InvalidInput("A credit's kind is “credit” or “refund”.", param="kind")
    kind = LedgerKind(kind)
    amount = _checked_amount(amount)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Give the reason for the credit.", param="reason")
    if len(reason) > REASON_MAX:
        raise InvalidInput(f"The reason is at most {REASON_MAX} characters.", param="reason")

    now = timezone.now()
    start = period_start(now)
    with transaction.atomic():
        # The organization's counter for this period, created if missing, then locked.
        PeriodSpend.objects.bulk_create(
            [PeriodSpend(organization_id=organization.pk, membership=None, period_start=start)], ignore_conflicts=True
        )
        counter = PeriodSpend.objects.select_for_update().get(
            organization_id=organization.pk, membership__isnull=True, period_start=start
        )
        entry = LedgerEntry.objects.create(
            organization_id=organization.pk,
            membership=None,
            request_id=f"credit:{uuid.uuid4()}",
            provider="",
            model=CREDIT_MODEL,
            input_per_mtok=ZERO,
            output_per_mtok=ZERO,
            cached_input_per_mtok=ZERO,
            cost=-amount,
            kind=kind,
            note=reason,
            created_at=now,
        )
        PeriodSpend.objects.filter(id=counter.id).update(spent=F("spent") - amount)
        audit_record(
            f"ledger.{kind.value}",
            organization=organization.pk,
            target=entry,
            target_label=f"{kind.label} of ${amount:f} to {organization.name}",
            changes={"amount": [None, f"{amount:f}"], "reason": [None, reason]},
            user=staff_user,
        )
    return entry
