"""Authorize a turn: the tier's rules, the prices, the reservation of the worst case, the rate limits.

Every entry point goes through `turn_authorize` before a provider is called (and through
billing.settlement.turn_settle after, whatever the outcome of the call).

Budgets are checked against `PeriodSpend` rows — one for the organization and one for the member
per calendar month (UTC). A reservation is one conditional UPDATE of both rows (`reserved` grows only
where the amount still fits the limit), so concurrent turns cannot both pass a check only one fits.
The rate-limit slot is taken after that UPDATE, in the same transaction: a turn the budget refuses
takes no slot, and a turn the rate limit refuses rolls its reservation back (other turns, waiting on
the row lock, never see it), so neither refusal uses up the other's allowance. The rows are locked
from the UPDATE to the commit right after, with one rate-limiter call in between: every turn of an
organization passes through its row, so the time it is held bounds the organization's turns per
second. Rows are always locked in id order. A window this process already found full refuses at
once, before any database work (`RateLimiter.known_refusal`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import ApiKey, Membership
from billing.alerts import BudgetWatch, alerted_up_to
from billing.counters import counters_locked_in_id_order, period_counters
from billing.errors import BudgetExceeded, MessageTooLong, ModelNotAllowed, ModelNotPriced, RateLimitExceeded
from billing.limits import Scope, Verdict, limiter
from billing.models import PeriodSpend, Price, RateLimitPolicy, Reservation
from billing.money import ZERO, usd, usd_cost, usd_left
from billing.periods import period_end, period_start
from billing.selectors import price_for
from config import metrics

logger = logging.getLogger(__name__)


def _reservation_ttl() -> timedelta:
    # Longer than any generation may run: after this the sweeper assumes the process died.
    return timedelta(seconds=getattr(settings, "BILLING_RESERVATION_TTL_SECONDS", 15 * 60))


@dataclass(frozen=True)
class TurnAuthorization:
    reservation_id: UUID
    request_id: str
    model: str  # the primary alias
    max_output_tokens: int  # what the request may ask of any model (each model also stops at its own limit)
    reserved_cost: Decimal
    # The reservation's time and counters, so settling need not read them again.
    created_at: datetime | None = None
    counter_ids: tuple[int, ...] = ()
    budget_watch: tuple[BudgetWatch, ...] = field(default=(), compare=False)
    # Every alias the reservation covers, the primary first: only these may serve the turn.
    models: tuple[str, ...] = ()


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


def _rate_limited(verdict: Verdict) -> RateLimitExceeded:
    return RateLimitExceeded(
        f"Rate limit reached; try again in {int(verdict.retry_after)} s.", retry_after=verdict.retry_after
    )


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


def _serving(model: str, models: Sequence[str]) -> tuple[str, ...]:
    """The primary, then the other aliases that may serve the call, each once, in order."""
    return tuple(dict.fromkeys((model, *models)))


def _worst_case(
    *, prices: dict[str, Price], output_tokens: int, prompt_tokens: dict[str, int], calls: int
) -> Decimal:
    """The most the turn can cost: each call on the dearest model that may serve it.

    `prompt_tokens`: per alias, the most its vendor can bill for the prompt. Each model answers at
    most its own output limit (llm clamps the request to it); each later call's prompt grows by a
    whole answer of the most any model may write.
    """
    outputs = {alias: min(output_tokens, _model_output_limit(alias) or output_tokens) for alias in prices}
    return sum(
        (
            max(
                price.cost(input_tokens=max(0, prompt_tokens[alias]) + n * output_tokens, output_tokens=outputs[alias])
                for alias, price in prices.items()
            )
            for n in range(calls)
        ),
        ZERO,
    )


# --- authorize -----------------------------------------------------------------------------------


def turn_authorize(
    *,
    membership: Membership,
    api_key: ApiKey | None = None,
    model: str,
    models: Sequence[str] = (),
    prompt_tokens: int,
    prompt_tokens_by_model: dict[str, int] | None = None,
    longest_message_chars: int,
    max_output_tokens: int | None,
    request_id: str,
    max_calls: int = 1,
) -> TurnAuthorization:
    """Check the tier's rules and the prices, reserve the worst-case cost, then take the rate-limit slot.

    `models`: every alias that may serve the call — the primary (`model`) first, then the fallbacks
    the caller allows (filter them with billing.selectors.models_billable). Each must be in the plan
    and priced; the reservation covers the dearest of them for every call, and settlement bills the
    model that really answered at its own price.
    `prompt_tokens`: the prompt's size; `prompt_tokens_by_model`: per alias, the most that model's
    vendor can bill for it (llm.tokens.prompt_tokens_bound), where it may exceed `prompt_tokens`.
    `longest_message_chars`: the longest single message of the whole prompt (system and earlier
    messages included, and the tools' JSON); the plan's `max_message_chars` applies to it.
    `max_calls`: how many provider calls the turn may make (a tool loop of N rounds makes N + 1);
    each later call's prompt is counted as growing by a whole answer, so the reservation still
    covers the worst case and the budget cannot be overshot.

    Raises ModelNotAllowed, ModelNotPriced, MessageTooLong, BudgetExceeded or RateLimitExceeded
    (the budget is checked first: a budget refusal takes no rate-limit slot). Authorizing the same
    request id twice returns the first authorization (and takes no second slot).
    """
    organization = membership.organization
    tier = organization.tier
    serving = _serving(model, models)
    for alias in serving:
        if not tier.allows_model(alias):
            also = "" if alias == model else f" (a fallback of “{model}”)"
            raise ModelNotAllowed(f"The {tier.name} plan does not include the model “{alias}”{also}.")
    if longest_message_chars > tier.max_message_chars:
        raise MessageTooLong(
            f"A message of this request is {longest_message_chars} characters long; the {tier.name} plan "
            f"allows at most {tier.max_message_chars} characters per message (system message and tools included)."
        )
    now = timezone.now()
    prices: dict[str, Price] = {}
    for alias in serving:
        price = price_for(alias, now)
        if price is None:
            raise ModelNotPriced(f"The model “{alias}” has no price in effect, so it cannot be used.")
        prices[alias] = price

    limits = [tier.max_output_tokens]
    model_limit = _model_output_limit(model)
    if model_limit:
        limits.append(model_limit)
    if max_output_tokens:
        limits.append(max_output_tokens)
    output_tokens = max(1, min(limits))
    by_model = {alias: max(prompt_tokens, (prompt_tokens_by_model or {}).get(alias, 0)) for alias in serving}
    worst_case = _worst_case(
        prices=prices, output_tokens=output_tokens, prompt_tokens=by_model, calls=max(1, max_calls)
    )

    scopes = rate_limit_scopes(membership=membership, api_key=api_key)
    known = limiter().known_refusal(scopes)
    if known is not None:  # refused before any database work
        metrics.refusal("rate_limit")
        raise _rate_limited(known)

    try:
        return _reserve(
            membership=membership,
            api_key=api_key,
            model=model,
            models=serving,
            prompt_tokens=by_model[model],
            output_tokens=output_tokens,
            amount=worst_case,
            request_id=request_id,
            now=now,
            scopes=scopes,
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
            models=serving,
        )


def _reserve(
    *,
    membership: Membership,
    api_key: ApiKey | None,
    model: str,
    models: tuple[str, ...],
    prompt_tokens: int,
    output_tokens: int,
    amount: Decimal,
    request_id: str,
    now: datetime,
    scopes: list[Scope],
) -> TurnAuthorization:
    organization = membership.organization
    org_counter, member_counter = period_counters(
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
                heartbeat_at=now,
            )
            # Late, so the rows stay locked only until the commit right after.
            if counters_locked_in_id_order(counter_ids).filter(fitting).update(reserved=F("reserved") + amount) != 2:
                raise _DoesNotFit
            # Only a turn the budget admits takes a slot; refused here, its reservation is rolled back.
            verdict = limiter().admit(scopes)
            if not verdict.allowed:
                raise _RateLimited(verdict)
    except _DoesNotFit:
        metrics.refusal("budget")
        raise _budget_refusal(checks=checks, amount=amount, now=now) from None
    except _RateLimited as refused:
        metrics.refusal("rate_limit")
        raise _rate_limited(refused.verdict) from None
    return TurnAuthorization(
        reservation_id=reservation.id,
        request_id=request_id,
        model=model,
        max_output_tokens=output_tokens,
        reserved_cost=amount,
        created_at=now,
        counter_ids=counter_ids,
        budget_watch=tuple(
            BudgetWatch(counter.id, counter.spent, limit, alerted_up_to(counter)) for counter, limit, _ in checks if limit
        ),
        models=models,
    )


class _DoesNotFit(Exception):
    """Rolls back a reservation whose amount does not fit a budget."""


class _RateLimited(Exception):
    """Rolls back a reservation the rate limit refuses."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict


def _budget_refusal(*, checks: list, amount: Decimal, now: datetime) -> BudgetExceeded:
    """The refusal, saying which budget is short and by how much (read again: other turns may have moved it)."""
    resets_at = period_end(now)
    current = PeriodSpend.objects.in_bulk([counter.id for counter, _, _ in checks])
    for counter, limit, what in checks:
        counter = current.get(counter.id, counter)
        if counter.spent >= limit or counter.spent + counter.reserved + amount > limit:
            left = limit - counter.spent - counter.reserved
            if counter.spent >= limit:
                detail = f"{what} of {usd(limit)} is used up"
            elif left <= 0:
                detail = f"{what} of {usd(limit)} is used up by the messages being answered now"
            else:
                detail = (
                    f"{what} of {usd(limit)} has {usd_left(left)} left, "
                    f"less than this message may cost ({usd_cost(amount)})"
                )
            break
    else:  # it fitted when read again: another turn's reservation was released in between
        detail = f"The monthly budget has less left than this message may cost ({usd_cost(amount)})"
    return BudgetExceeded(
        f"{detail}; it resets on {resets_at:%Y-%m-%d} at 00:00 UTC.",
        retry_after=max(1.0, (resets_at - now).total_seconds()),
    )
