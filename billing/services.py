"""Writes of billing: authorize a turn (tier rules, price, rate limits, reservation) and settle it.

Every entry point (websocket, REST, OpenAI-compatible endpoint) goes through `turn_authorize`
before the provider is called and `turn_settle` after, whatever the outcome of the call.

Budgets are checked against `PeriodSpend` rows — one for the organization and one for the member
per calendar month (UTC). A reservation is one conditional UPDATE of both rows (`reserved` grows only
where the amount still fits the limit), so concurrent turns cannot both pass a check only one fits,
and each row is locked only from that statement to the commit: every turn of an organization passes
through its row, so the time it is held bounds the organization's turns per second. Rows are always
locked in id order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q, Subquery, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.errors import PermissionDenied
from accounts.models import ApiKey, Membership, Organization
from billing.errors import BudgetExceeded, MessageTooLong, ModelNotAllowed, ModelNotPriced, RateLimitExceeded
from billing.limits import Scope, limiter
from billing.models import (
    Budget,
    LedgerEntry,
    PeriodSpend,
    Price,
    RateLimitPolicy,
    Reservation,
    ReservationStatus,
)
from billing.periods import period_end, period_start
from billing.selectors import organization_budget_limit, price_for
from llm.types import Usage

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
THRESHOLDS = (75, 90)


def _reservation_ttl() -> timedelta:
    # Longer than any generation may run: after this the sweeper assumes the process died.
    return timedelta(seconds=getattr(settings, "BILLING_RESERVATION_TTL_SECONDS", 15 * 60))


@dataclass(frozen=True)
class BudgetWatch:
    """A budget counter as the turn found it, to tell at settlement whether it crossed an alert threshold."""

    counter_id: int
    spent: Decimal
    limit: Decimal
    alerted_up_to: int  # the highest threshold already alerted this period (0 for none)


@dataclass(frozen=True)
class TurnAuthorization:
    reservation_id: UUID
    request_id: str
    model: str
    max_output_tokens: int
    reserved_cost: Decimal
    # The reservation's time and counters, so settling need not read them again.
    created_at: datetime | None = None
    counter_ids: tuple[int, ...] = ()
    budget_watch: tuple[BudgetWatch, ...] = field(default=(), compare=False)


# --- rate-limit scopes -------------------------------------------------------------------------


_POLICY_TTL = 30.0
_policies: dict[int, tuple[float, RateLimitPolicy | None]] = {}


def _policy(tier_id: int) -> RateLimitPolicy | None:
    """The tier's per-member/per-key limits, cached for 30 s per process (edited rarely, read every turn)."""
    now = time.monotonic()
    cached = _policies.get(tier_id)
    if cached is None or cached[0] < now:
        cached = (now + _POLICY_TTL, RateLimitPolicy.objects.filter(tier_id=tier_id).first())
        _policies[tier_id] = cached
    return cached[1]


def rate_limit_policies_forget() -> None:
    _policies.clear()
    _model_limits.clear()


def rate_limit_scopes(*, membership: Membership, api_key: ApiKey | None = None) -> list[Scope]:
    tier = membership.organization.tier
    policy = _policy(tier.id)

    def pick(value: int | None, default: int) -> int:
        return default if value is None else value

    scopes = [
        Scope(f"org:{membership.organization_id}", tier.requests_per_minute, tier.tokens_per_minute),
        Scope(
            f"member:{membership.id}",
            pick(policy and policy.member_requests_per_minute, tier.requests_per_minute),
            pick(policy and policy.member_tokens_per_minute, tier.tokens_per_minute),
        ),
    ]
    if api_key is not None:
        scopes.append(
            Scope(
                f"key:{api_key.id}",
                pick(policy and policy.api_key_requests_per_minute, tier.requests_per_minute),
                pick(policy and policy.api_key_tokens_per_minute, tier.tokens_per_minute),
            )
        )
    return scopes


# --- budget counters ---------------------------------------------------------------------------


def _period_counters(*, organization_id: UUID, membership_id: UUID, start: date) -> tuple[PeriodSpend, PeriodSpend]:
    """The organization's and the member's counters for the period (created if missing), unlocked.

    Each carries the budgets set for the organization and for the member (`org_budget`,
    `member_budget`: None where none is set), read in the same query.
    """
    scope = Q(membership__isnull=True) | Q(membership_id=membership_id)
    budgets = Budget.objects.filter(organization_id=organization_id).order_by()
    for _ in range(2):
        rows = {
            row.membership_id: row
            for row in PeriodSpend.objects.filter(scope, organization_id=organization_id, period_start=start).annotate(
                org_budget=Subquery(budgets.filter(membership__isnull=True).values("monthly_limit_usd")[:1]),
                member_budget=Subquery(budgets.filter(membership_id=membership_id).values("monthly_limit_usd")[:1]),
            )
        }
        if None in rows and membership_id in rows:
            return rows[None], rows[membership_id]
        # Once a month per member. ON CONFLICT DO NOTHING: another turn may be creating them too.
        PeriodSpend.objects.bulk_create(
            [PeriodSpend(organization_id=organization_id, membership_id=m, period_start=start) for m in (None, membership_id) if m not in rows],
            ignore_conflicts=True,
        )
    raise DatabaseError("budget counters could not be created")


def _lock_counter_ids(ids: Sequence[int]) -> dict[int, PeriodSpend]:
    return {c.id: c for c in PeriodSpend.objects.select_for_update().filter(id__in=set(ids)).order_by("id")}


def _money(value: Decimal) -> str:
    cents = value.quantize(Decimal("0.01"))
    if cents != value and abs(value) < 1:
        return f"${value.quantize(Decimal('0.0001'))}"
    return f"${cents}"


# --- authorize -----------------------------------------------------------------------------------


_model_limits: dict[str, tuple[float, int | None]] = {}


def _model_output_limit(model: str) -> int | None:
    """The model's most output tokens from the llm registry (cached 30 s per process), or None."""
    now = time.monotonic()
    cached = _model_limits.get(model)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        from llm.registry import model_get
    except ImportError:
        return None
    from llm.errors import LLMError

    try:
        with transaction.atomic():  # a savepoint: a failed lookup must not break the caller's transaction
            limit = model_get(model).max_output_tokens
    except LLMError:  # unknown or unconfigured: the turn itself reports that; billing only clamps
        limit = None
    except DatabaseError:
        logger.exception("model registry lookup failed for %s", model)
        return None
    _model_limits[model] = (now + _POLICY_TTL, limit)
    return limit


def turn_authorize(
    *,
    membership: Membership,
    api_key: ApiKey | None = None,
    model: str,
    prompt_tokens: int,
    message_chars: int,
    max_output_tokens: int | None,
    request_id: str,
    max_calls: int = 1,
) -> TurnAuthorization:
    """Check the tier's rules, the price, the rate limits, then reserve the worst-case cost.

    `max_calls`: how many provider calls the turn may make (a tool loop of N rounds makes N + 1);
    each later call's prompt is counted as growing by a whole answer, so the reservation still
    covers the worst case and the budget cannot be overshot.

    Raises ModelNotAllowed, ModelNotPriced, MessageTooLong, RateLimitExceeded or BudgetExceeded.
    Authorizing the same request id twice returns the first authorization.
    """
    organization = membership.organization
    tier = organization.tier
    if not tier.allows_model(model):
        raise ModelNotAllowed(f"The {tier.name} plan does not include the model “{model}”.")
    if message_chars > tier.max_message_chars:
        raise MessageTooLong(
            f"The message is {message_chars} characters long; the {tier.name} plan allows {tier.max_message_chars}."
        )
    now = timezone.now()
    price = price_for(model, now)
    if price is None:
        raise ModelNotPriced(f"The model “{model}” has no price in effect, so it cannot be used.")

    limits = [tier.max_output_tokens]
    model_limit = _model_output_limit(model)
    if model_limit:
        limits.append(model_limit)
    if max_output_tokens:
        limits.append(max_output_tokens)
    output_tokens = max(1, min(limits))
    calls = max(1, max_calls)
    worst_case = sum(
        (price.cost(input_tokens=max(0, prompt_tokens) + n * output_tokens, output_tokens=output_tokens) for n in range(calls)),
        ZERO,
    )

    verdict = limiter().admit(rate_limit_scopes(membership=membership, api_key=api_key))
    if not verdict.allowed:
        raise RateLimitExceeded(
            f"Rate limit reached; try again in {int(verdict.retry_after)} s.", retry_after=verdict.retry_after
        )

    try:
        return _reserve(
            membership=membership,
            api_key=api_key,
            model=model,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            amount=worst_case,
            request_id=request_id,
            now=now,
        )
    except IntegrityError:
        # The same request id was authorized before (a retried turn): that authorization stands.
        existing = Reservation.objects.filter(request_id=request_id, organization_id=organization.id).first()
        if existing is None:
            raise
        return TurnAuthorization(
            reservation_id=existing.id,
            request_id=existing.request_id,
            model=existing.model,
            max_output_tokens=existing.max_output_tokens,
            reserved_cost=existing.amount,
            created_at=existing.created_at,
            counter_ids=tuple(i for i in (existing.org_counter_id, existing.member_counter_id) if i),
        )


def _reserve(
    *,
    membership: Membership,
    api_key: ApiKey | None,
    model: str,
    prompt_tokens: int,
    output_tokens: int,
    amount: Decimal,
    request_id: str,
    now: datetime,
) -> TurnAuthorization:
    organization = membership.organization
    org_counter, member_counter = _period_counters(
        organization_id=organization.id, membership_id=membership.id, start=period_start(now)
    )
    # The organization's budget: a staff override, else its tier's; the member's own, if one is set.
    org_limit = org_counter.org_budget if org_counter.org_budget is not None else organization.tier.monthly_budget_usd
    member_limit = member_counter.member_budget
    checks = [(org_counter, org_limit, "The organization's monthly budget")]
    if member_limit is not None:
        checks.append((member_counter, member_limit, "Your monthly budget"))

    def fits(counter: PeriodSpend, limit: Decimal | None) -> Q:
        if limit is None:
            return Q(id=counter.id)
        # At 100 % every turn is refused, even one of a free model.
        return Q(id=counter.id, spent__lt=limit, reserved__lte=limit - amount - F("spent"))

    counter_ids = tuple(sorted((org_counter.id, member_counter.id)))
    fitting = fits(org_counter, org_limit) | fits(member_counter, member_limit)
    try:
        with transaction.atomic():
            reservation = Reservation.objects.create(
                organization=organization,
                membership=membership,
                api_key=api_key,
                request_id=request_id,
                model=model,
                prompt_tokens=max(0, prompt_tokens),
                max_output_tokens=output_tokens,
                amount=amount,
                org_counter=org_counter,
                member_counter=member_counter,
                created_at=now,
                expires_at=now + _reservation_ttl(),
            )
            # Last, so the rows stay locked only until the commit right after.
            if _locked_in_id_order(counter_ids).filter(fitting).update(reserved=F("reserved") + amount) != 2:
                raise _DoesNotFit
    except _DoesNotFit:
        raise _budget_refusal(checks=checks, amount=amount, now=now) from None
    return TurnAuthorization(
        reservation_id=reservation.id,
        request_id=request_id,
        model=model,
        max_output_tokens=output_tokens,
        reserved_cost=amount,
        created_at=now,
        counter_ids=counter_ids,
        budget_watch=tuple(
            BudgetWatch(counter.id, counter.spent, limit, _alerted_up_to(counter)) for counter, limit, _ in checks if limit
        ),
    )


class _DoesNotFit(Exception):
    """Rolls back a reservation whose amount does not fit a budget."""


def _locked_in_id_order(ids: Sequence[int]):
    """The counters, for an UPDATE that first locks them in id order (a sub-select FOR UPDATE), so
    two turns never lock an organization's and a member's counter in opposite orders."""
    return PeriodSpend.objects.filter(id__in=PeriodSpend.objects.filter(id__in=ids).order_by("id").select_for_update().values("id"))


def _budget_refusal(*, checks: list, amount: Decimal, now: datetime) -> BudgetExceeded:
    """The refusal, saying which budget is short and by how much (read again: other turns may have moved it)."""
    resets_at = period_end(now)
    current = PeriodSpend.objects.in_bulk([counter.id for counter, _, _ in checks])
    for counter, limit, what in checks:
        counter = current.get(counter.id, counter)
        if counter.spent >= limit or counter.spent + counter.reserved + amount > limit:
            used_up = counter.spent >= limit
            detail = (
                f"{what} of {_money(limit)} is used up"
                if used_up
                else f"{what} of {_money(limit)} has {_money(max(ZERO, limit - counter.spent - counter.reserved))} "
                f"left, less than this message may cost ({_money(amount)})"
            )
            break
    else:  # it fitted when read again: another turn's reservation was released in between
        detail = f"The monthly budget has less left than this message may cost ({_money(amount)})"
    return BudgetExceeded(
        f"{detail}; it resets on {resets_at:%Y-%m-%d} at 00:00 UTC.",
        retry_after=max(1.0, (resets_at - now).total_seconds()),
    )


def _alerted_up_to(counter: PeriodSpend) -> int:
    return 90 if counter.alerted_90_at else 75 if counter.alerted_75_at else 0


# --- settle --------------------------------------------------------------------------------------


def _price_at(model: str, fallback: str, at: datetime) -> Price | None:
    return price_for(model, at) or (price_for(fallback, at) if fallback != model else None)


def turn_settle(
    *,
    authorization: TurnAuthorization,
    usages: Sequence[Usage],
    membership: Membership,
    api_key: ApiKey | None = None,
    conversation_id: UUID | None = None,
    message_id: UUID | None = None,
) -> Decimal:
    """Bill every provider call once, release the reservation, count the tokens per minute.

    Idempotent: ledger rows are keyed by the call id, and the reservation is released only once.
    Returns the turn's cost (all its calls, including ones billed by an earlier attempt).
    """
    call_ids = [u.call_id or f"{authorization.request_id}:{i}" for i, u in enumerate(usages)]
    new_entries, total = _settle(
        authorization=authorization,
        usages=usages,
        call_ids=call_ids,
        membership=membership,
        api_key=api_key,
        conversation_id=conversation_id,
        message_id=message_id,
    )
    tokens = sum(e.input_tokens + e.output_tokens + e.cached_input_tokens for e in new_entries)
    if tokens:
        limiter().record_tokens(rate_limit_scopes(membership=membership, api_key=api_key), tokens)
    return total


@transaction.atomic
def _settle(
    *,
    authorization: TurnAuthorization,
    usages: Sequence[Usage],
    call_ids: list[str],
    membership: Membership,
    api_key: ApiKey | None,
    conversation_id: UUID | None,
    message_id: UUID | None,
) -> tuple[list[LedgerEntry], Decimal]:
    now = timezone.now()
    if authorization.created_at is None or not authorization.counter_ids:
        authorization = _authorization_of(authorization, membership=membership)
    # Releasing is one conditional UPDATE: only the first settlement of an open reservation releases it.
    released = Reservation.objects.filter(
        id=authorization.reservation_id, organization_id=membership.organization_id, status=ReservationStatus.OPEN
    ).update(status=ReservationStatus.SETTLED, closed_at=now)
    priced_at = authorization.created_at or now
    # A released reservation was never settled, so none of its calls is billed yet; otherwise look.
    already = (
        set()
        if released
        else set(LedgerEntry.objects.filter(request_id__in=call_ids).values_list("request_id", flat=True))
    )
    new_entries: list[LedgerEntry] = []
    for usage, call_id in zip(usages, call_ids, strict=True):
        if call_id in already:
            continue
        already.add(call_id)
        model = usage.model or authorization.model
        price = _price_at(model, authorization.model, priced_at)
        if price is None:
            # Only reachable if the price row was deleted mid-turn; bill at zero rather than lose the row.
            logger.error("No price for %s at %s; billing call %s at zero", model, priced_at, call_id)
            price = Price(model=model, is_free=True)
        entry = LedgerEntry(
            organization_id=membership.organization_id,
            membership=membership,
            user_email=membership.user.email,
            api_key=api_key,
            conversation_id=conversation_id,
            message_id=message_id,
            turn_request_id=authorization.request_id,
            request_id=call_id,
            provider=usage.provider,
            model=model,
            input_tokens=max(0, usage.input_tokens),
            output_tokens=max(0, usage.output_tokens),
            cached_input_tokens=max(0, usage.cached_input_tokens),
            input_per_mtok=price.input_unit,
            output_per_mtok=price.output_unit,
            cached_input_per_mtok=price.cached_input_unit,
            estimated=usage.estimated,
            created_at=now,
        )
        entry.cost = price.cost(
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cached_input_tokens=entry.cached_input_tokens,
        )
        new_entries.append(entry)
    new_cost = sum((e.cost for e in new_entries), ZERO)

    if new_entries:
        LedgerEntry.objects.bulk_create(new_entries)
    release = authorization.reserved_cost if released else ZERO
    if new_entries or release:
        # Last, so the counters stay locked only until the commit right after.
        _counters_add(authorization=authorization, membership=membership, spent=new_cost, released=release, now=now)
    if new_cost:
        crossing = [w.counter_id for w in authorization.budget_watch if _crosses(w, new_cost)]
        if crossing:
            transaction.on_commit(lambda: budget_alerts_check(counter_ids=crossing), robust=True)

    if len(already) == len(new_entries):  # every call was billed just now
        return new_entries, new_cost
    total = sum(LedgerEntry.objects.filter(request_id__in=call_ids).values_list("cost", flat=True), ZERO)
    return new_entries, total


def _authorization_of(authorization: TurnAuthorization, *, membership: Membership) -> TurnAuthorization:
    """An authorization completed from its reservation (one built before it carried counters)."""
    reservation = Reservation.objects.filter(
        id=authorization.reservation_id, organization_id=membership.organization_id
    ).first()
    if reservation is None:
        return authorization
    return replace(
        authorization,
        created_at=reservation.created_at,
        counter_ids=tuple(i for i in (reservation.org_counter_id, reservation.member_counter_id) if i),
    )


def _counters_add(
    *, authorization: TurnAuthorization, membership: Membership, spent: Decimal, released: Decimal, now: datetime
) -> None:
    """Add the spend to this period's counters and release the reservation from the counters it is held on."""
    held = authorization.counter_ids
    if authorization.created_at is not None and period_start(authorization.created_at) == period_start(now):
        current = held
    else:  # a turn that crossed midnight UTC on the 1st: spend goes to the new month
        org, member = _period_counters(
            organization_id=membership.organization_id, membership_id=membership.id, start=period_start(now)
        )
        current = (org.id, member.id)
    release = {"reserved": Greatest(F("reserved") - released, Value(ZERO))} if released else {}
    spend = {"spent": F("spent") + spent} if spent else {}
    if set(current) == set(held):
        _locked_in_id_order(held).update(**release, **spend)
        return
    # The old month's counters have the lower ids: released first, keeping the id order.
    if release:
        _locked_in_id_order(held).update(**release)
    if spend:
        _locked_in_id_order(current).update(**spend)


def _crosses(watch: BudgetWatch, cost: Decimal) -> bool:
    """Whether this cost takes the counter past an alert threshold not yet alerted (as the turn found it)."""
    percent = (watch.spent + cost) * 100 / watch.limit
    return any(percent >= threshold > watch.alerted_up_to for threshold in THRESHOLDS)


def reservations_release_expired(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Release reservations whose process died before settling them. Returns how many."""
    now = now or timezone.now()
    ids = list(
        Reservation.objects.filter(status=ReservationStatus.OPEN, expires_at__lt=now)
        .order_by("expires_at")
        .values_list("id", flat=True)[:limit]
    )
    released = 0
    for reservation_id in ids:
        with transaction.atomic():
            reservation = (
                Reservation.objects.select_for_update()
                .filter(id=reservation_id, status=ReservationStatus.OPEN)
                .first()
            )
            if reservation is None:
                continue
            counters = _lock_counter_ids([i for i in (reservation.org_counter_id, reservation.member_counter_id) if i])
            for counter in counters.values():
                counter.reserved = max(ZERO, counter.reserved - reservation.amount)
                counter.save(update_fields=["reserved"])
            reservation.status = ReservationStatus.EXPIRED
            reservation.closed_at = now
            reservation.save(update_fields=["status", "closed_at"])
            released += 1
    if released:
        logger.warning("Released %d expired budget reservations", released)
    return released


# --- thresholds ----------------------------------------------------------------------------------


def _counter_limit(counter: PeriodSpend) -> Decimal | None:
    if counter.membership_id is None:
        return organization_budget_limit(organization=counter.organization)
    own = Budget.objects.filter(organization_id=counter.organization_id, membership_id=counter.membership_id).first()
    return own.monthly_limit_usd if own else None


def budget_alerts_check(*, counter_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Send the 75 % / 90 % alerts a counter has crossed, once per counter (so once per period).

    Returns (counter id, threshold) of the alerts sent. A counter that jumps past both at once
    gets one e-mail (the 90 % one) and both marked.
    """
    sent = []
    now = timezone.now()
    for counter in PeriodSpend.objects.filter(id__in=counter_ids).select_related("organization__tier"):
        limit = _counter_limit(counter)
        if not limit or limit <= 0:
            continue
        percent = counter.spent * 100 / limit
        crossed = [t for t in THRESHOLDS if percent >= t]
        if not crossed:
            continue
        newly = []
        for threshold in crossed:
            field = f"alerted_{threshold}_at"
            if PeriodSpend.objects.filter(id=counter.id, **{f"{field}__isnull": True}).update(**{field: now}):
                newly.append(threshold)
        if newly:
            threshold = max(newly)
            sent.append((counter.id, threshold))
            # robust: a broker outage loses an e-mail (the banner still shows), never a settlement.
            transaction.on_commit(lambda cid=counter.id, t=threshold: _alert_enqueue(cid, t), robust=True)
    return sent


def _alert_enqueue(counter_id: int, threshold: int) -> None:
    from billing.tasks import budget_alert_send

    budget_alert_send.delay(counter_id, threshold)


def budget_alert_email(*, counter_id: int, threshold: int) -> int:
    """E-mail the organization's owners and admins (and the member, for a member budget)."""
    from django.core.mail import send_mail

    counter = PeriodSpend.objects.select_related("organization__tier", "membership__user").filter(id=counter_id).first()
    if counter is None:
        return 0
    limit = _counter_limit(counter)
    if limit is None:
        return 0
    organization = counter.organization
    recipients = set(
        Membership.objects.filter(organization=organization, role__in=["owner", "admin"]).values_list(
            "user__email", flat=True
        )
    )
    if counter.membership_id is not None:
        recipients.add(counter.membership.user.email)
        whose = f"{counter.membership.user.email}'s monthly budget in {organization.name}"
    else:
        whose = f"{organization.name}'s monthly budget"
    start = counter.period_start
    resets = period_end(datetime(start.year, start.month, start.day, tzinfo=UTC))
    subject = f"Parley: {whose} is {threshold}% used"
    body = (
        f"{whose} has reached {threshold}% ({_money(counter.spent)} of {_money(limit)}) for "
        f"{start:%B %Y}.\n\nAt 100% new messages are refused until the budget resets on "
        f"{resets:%Y-%m-%d} at 00:00 UTC.\n"
    )
    return send_mail(subject, body, None, sorted(recipients))


# --- budgets set by people -----------------------------------------------------------------------


@transaction.atomic
def member_budget_set(*, actor: Membership, member: Membership, monthly_limit_usd: Decimal | None) -> Budget | None:
    """An organization owner/admin sets (or, with None, removes) a member's monthly budget."""
    if not actor.is_admin:
        raise PermissionDenied("Only the organization's owners and admins can set budgets.")
    if member.organization_id != actor.organization_id:
        raise PermissionDenied("That member is not in your organization.")
    if monthly_limit_usd is None:
        Budget.objects.filter(organization_id=actor.organization_id, membership=member).delete()
        return None
    if monthly_limit_usd < 0:
        from accounts.errors import InvalidInput

        raise InvalidInput("A budget cannot be negative.")
    budget, _ = Budget.objects.update_or_create(
        organization_id=actor.organization_id,
        membership=member,
        defaults={"monthly_limit_usd": monthly_limit_usd, "updated_at": timezone.now()},
    )
    return budget


def organization_budget_set(*, organization: Organization, monthly_limit_usd: Decimal | None) -> Budget | None:
    """Staff override of an organization's monthly budget (None: back to the tier's)."""
    if monthly_limit_usd is None:
        Budget.objects.filter(organization=organization, membership__isnull=True).delete()
        return None
    budget, _ = Budget.objects.update_or_create(
        organization=organization,
        membership=None,
        defaults={"monthly_limit_usd": monthly_limit_usd, "updated_at": timezone.now()},
    )
    return budget


# --- daily summary -------------------------------------------------------------------------------


def usage_rollup(*, through: date | None = None, since: date | None = None) -> int:
    """Roll the ledger's days in [since, through) into DailyUsage and move the watermark to `through`.

    `through` defaults to today (UTC), so only finished days are rolled; `since` defaults to the
    current watermark (or the ledger's first day). Re-rolling a day replaces its rows.
    Returns how many summary rows were written.
    """
    from django.db.models import Count, Sum
    from django.db.models.functions import TruncDate

    from billing.models import DailyUsage, RollupState

    through = through or timezone.now().astimezone(UTC).date()
    with transaction.atomic():
        state, _ = RollupState.objects.select_for_update().get_or_create(pk=1)
        if since is None:
            since = state.rolled_through
        if since is None:
            first = LedgerEntry.objects.order_by("created_at").values_list("created_at", flat=True).first()
            since = first.astimezone(UTC).date() if first else through
        if since >= through:
            return 0
        start = datetime(since.year, since.month, since.day, tzinfo=UTC)
        end = datetime(through.year, through.month, through.day, tzinfo=UTC)
        DailyUsage.objects.filter(day__gte=since, day__lt=through).delete()
        rows = (
            LedgerEntry.objects.filter(created_at__gte=start, created_at__lt=end)
            .annotate(day=TruncDate("created_at", tzinfo=UTC))
            .values("day", "organization_id", "membership_id", "model")
            .annotate(
                n=Count("id"),
                i=Sum("input_tokens"),
                o=Sum("output_tokens"),
                ci=Sum("cached_input_tokens"),
                c=Sum("cost"),
            )
            .order_by()
        )
        summary = [
            DailyUsage(
                day=row["day"],
                organization_id=row["organization_id"],
                membership_id=row["membership_id"],
                model=row["model"],
                calls=row["n"],
                input_tokens=row["i"] or 0,
                output_tokens=row["o"] or 0,
                cached_input_tokens=row["ci"] or 0,
                cost=Decimal(row["c"] or 0).quantize(Decimal("1e-12")),
            )
            for row in rows.iterator(chunk_size=5000)
        ]
        DailyUsage.objects.bulk_create(summary, batch_size=2000)
        if state.rolled_through is None or through > state.rolled_through:
            state.rolled_through = through
        state.updated_at = timezone.now()
        state.save()
    return len(summary)


def budget_alerts_sweep(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """Send any threshold alert not sent yet for this period's counters (a safety net for settle)."""
    now = now or timezone.now()
    ids = list(
        PeriodSpend.objects.filter(period_start=period_start(now), spent__gt=0)
        .filter(Q(alerted_75_at__isnull=True) | Q(alerted_90_at__isnull=True))
        .values_list("id", flat=True)
    )
    return budget_alerts_check(counter_ids=ids)
