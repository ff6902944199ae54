"""Requests and tokens per minute, per organization, member and API key, in Redis or in memory."""

import pytest
from django.conf import settings

from accounts.models import Tier
from billing import limits
from billing.errors import RateLimitExceeded
from billing.limits import MemoryWindows, RateLimiter, Scope
from billing.models import RateLimitPolicy
from billing.reservations import rate_limit_policies_forget

from .conftest import authorize, ensure_test_model, settle, usage_for


class Clock:
    def __init__(self, start_ms: int = 1_800_000_000_000):
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(limits, "_clock_ms", clock)
    return clock


def set_limits(rpm: int, tpm: int, **policy) -> None:
    ensure_test_model(requests_per_minute=rpm, tokens_per_minute=tpm)
    if policy:
        for tier in Tier.objects.all():
            RateLimitPolicy.objects.update_or_create(tier=tier, defaults=policy)
    rate_limit_policies_forget()


@pytest.mark.django_db
def test_the_n_plus_first_request_in_a_minute_is_refused_with_retry_after(org_a, clock):
    set_limits(rpm=3, tpm=10**9)
    authorize(org_a.member)
    clock.advance(10)
    authorize(org_a.member)
    clock.advance(10)
    authorize(org_a.member)
    clock.advance(5)
    with pytest.raises(RateLimitExceeded) as refused:
        authorize(org_a.member)
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after == 35  # the first request leaves the window 60 s after it came
    clock.advance(34)
    with pytest.raises(RateLimitExceeded) as again:
        authorize(org_a.member)
    assert again.value.retry_after == 1
    clock.advance(1.001)
    authorize(org_a.member)


@pytest.mark.django_db
def test_organization_limit_is_shared_by_members_and_member_limits_are_their_own(org_a, org_b, clock):
    set_limits(rpm=4, tpm=10**9, member_requests_per_minute=2)
    authorize(org_a.member)
    authorize(org_a.member)
    with pytest.raises(RateLimitExceeded):
        authorize(org_a.member)  # the member's own 2 per minute
    authorize(org_a.admin)
    authorize(org_a.admin)
    with pytest.raises(RateLimitExceeded):
        authorize(org_a.owner)  # the organization's 4 per minute, though the owner has sent nothing
    authorize(org_b.member)  # another organization is not affected


@pytest.mark.django_db
def test_a_refusal_takes_no_slot_in_other_scopes(org_a, clock):
    set_limits(rpm=3, tpm=10**9, member_requests_per_minute=1)
    authorize(org_a.member)
    for _ in range(5):
        with pytest.raises(RateLimitExceeded):
            authorize(org_a.member)
    authorize(org_a.admin)
    authorize(org_a.owner)  # the member's refusals did not use up the organization's 3


@pytest.mark.django_db
def test_api_key_limit(org_a, api_key_factory, clock):
    set_limits(rpm=100, tpm=10**9, api_key_requests_per_minute=1)
    key, _ = api_key_factory(org_a.member)
    authorize(org_a.member, api_key=key)
    with pytest.raises(RateLimitExceeded):
        authorize(org_a.member, api_key=key)
    authorize(org_a.member)  # the same member without the key


@pytest.mark.django_db
def test_tokens_per_minute_count_the_real_tokens_after_settlement(org_a, clock):
    set_limits(rpm=1000, tpm=5000)
    auth = authorize(org_a.member, prompt_tokens=100, max_output_tokens=1000)
    authorize(org_a.member)  # nothing settled yet: no tokens counted
    clock.advance(20)
    settle(auth, org_a.member, [usage_for(auth, input_tokens=3000, output_tokens=2500)])
    clock.advance(1)
    with pytest.raises(RateLimitExceeded) as refused:
        authorize(org_a.member)
    assert refused.value.retry_after == 59  # until the 5500 settled tokens leave the window
    clock.advance(59)
    authorize(org_a.member)


@pytest.mark.django_db
def test_tokens_below_the_limit_pass(org_a, clock):
    set_limits(rpm=1000, tpm=5000)
    auth = authorize(org_a.member)
    settle(auth, org_a.member, [usage_for(auth, input_tokens=2000, output_tokens=2000)])
    authorize(org_a.member)


def test_memory_windows_match_the_redis_script():
    memory = MemoryWindows()
    scope = [Scope("org:x", 2, 100)]
    assert memory.admit(scope, 0).allowed
    assert memory.admit(scope, 1000).allowed
    refused = memory.admit(scope, 2000)
    assert not refused.allowed and refused.retry_after == 58
    assert memory.admit(scope, 60_001).allowed
    memory.record_tokens(scope, 150, 61_000)
    refused = memory.admit(scope, 62_000)
    assert not refused.allowed and refused.retry_after == 59


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")
def test_redis_script_shares_windows_between_limiters():
    name = "org:shared-test"
    first, second = RateLimiter(settings.REDIS_URL), RateLimiter(settings.REDIS_URL)
    assert first.using_redis
    import uuid

    scope = [Scope(f"{name}-{uuid.uuid4()}", 2, None)]
    now = limits._clock_ms()
    assert first.admit(scope, now).allowed
    assert second.admit(scope, now + 1).allowed  # another process sees the first's slot
    refused = first.admit(scope, now + 2)
    assert not refused.allowed and refused.retry_after == 60


def test_redis_down_falls_back_to_memory(caplog):
    limiter = RateLimiter("redis://127.0.0.1:1/0")  # nothing listens there
    scope = [Scope("org:down", 1, None)]
    assert limiter.admit(scope, 0).allowed  # fails open to this process's window…
    assert "Redis unreachable" in caplog.text
    assert not limiter.admit(scope, 1).allowed  # …which still limits
    assert not limiter.using_redis  # and Redis is not retried for a few seconds


@pytest.mark.django_db
def test_turns_go_on_and_budgets_hold_while_redis_is_down(org_a, settings, caplog):
    from decimal import Decimal

    from billing.budgets import organization_budget_set
    from billing.errors import BudgetExceeded

    set_limits(rpm=2, tpm=10**9)
    settings.BILLING_RATELIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.003"))
    auth = authorize(org_a.member)
    assert "Redis unreachable" in caplog.text
    settle(auth, org_a.member)
    with pytest.raises(BudgetExceeded):
        authorize(org_a.admin)  # the budget is enforced by the database
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("1"))
    authorize(org_a.owner)  # the budget's refusal took no slot: this is the minute's second request
    with pytest.raises(RateLimitExceeded):
        authorize(org_a.admin)  # and this process still limits: 2 requests were admitted this minute


# --- budget refusals and rate-limit slots -------------------------------------------------------


@pytest.mark.django_db
def test_budget_refusals_take_no_rate_limit_slot(org_a, clock):
    from decimal import Decimal

    from billing.budgets import organization_budget_set
    from billing.errors import BudgetExceeded

    set_limits(rpm=2, tpm=10**9)
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("0.004"))
    for _ in range(5):
        with pytest.raises(BudgetExceeded):
            authorize(org_a.member, prompt_tokens=10_000)  # may cost $0.012: more than the budget
    authorize(org_a.member)  # $0.003 fits: the five refusals left both slots of the minute
    authorize(org_a.admin, model="demo")
    with pytest.raises(RateLimitExceeded):
        authorize(org_a.owner, model="demo")  # the organization's 2 requests this minute are used


@pytest.mark.django_db
def test_a_rate_limit_refusal_keeps_no_reservation(org_a, clock):
    from billing.models import PeriodSpend, Reservation

    set_limits(rpm=1, tpm=10**9)
    admitted = authorize(org_a.member)
    with pytest.raises(RateLimitExceeded):
        authorize(org_a.member, rid="refused-turn")
    assert not Reservation.objects.filter(request_id="refused-turn").exists()
    counter = PeriodSpend.objects.get(organization=org_a.organization, membership__isnull=True)
    assert counter.reserved == admitted.reserved_cost


@pytest.mark.django_db
def test_while_a_window_is_known_full_a_refusal_costs_no_query(org_a, clock, django_assert_num_queries):
    from billing.reservations import turn_authorize

    from .conftest import fresh, request_id

    set_limits(rpm=1, tpm=10**9)
    member = fresh(org_a.member)

    def turn():
        return turn_authorize(
            membership=member, model="test-model", prompt_tokens=10, longest_message_chars=10, max_output_tokens=10,
            request_id=request_id(),
        )  # fmt: skip

    turn()
    clock.advance(15)
    with pytest.raises(RateLimitExceeded):
        turn()  # found full in Redis (or memory), after reserving and rolling back
    clock.advance(5)
    with django_assert_num_queries(0), pytest.raises(RateLimitExceeded) as again:
        turn()
    assert again.value.retry_after == 40
    clock.advance(40.001)
    turn()  # the first request left the window


def test_a_known_refusal_holds_until_the_window_frees_and_only_for_the_same_limits(clock):
    limiter = RateLimiter(None)
    scope = [Scope("org:known", 1, None)]
    assert limiter.known_refusal(scope) is None
    assert limiter.admit(scope).allowed
    clock.advance(10)
    assert not limiter.admit(scope).allowed
    known = limiter.known_refusal(scope)
    assert known is not None and not known.allowed and known.retry_after == 50 and known.scope == "org:known"
    assert limiter.known_refusal([Scope("org:known", 2, None)]) is None  # a raised limit is asked again
    assert limiter.known_refusal([Scope("org:other", 1, None)]) is None
    clock.advance(50)
    assert limiter.known_refusal(scope) is None
    assert limiter.admit(scope).allowed
