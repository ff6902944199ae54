"""Fallbacks: only models the plan includes and that have a price may serve a call, and the
reservation covers the dearest of them, so a fallback is never billed above what was reserved."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Tier
from billing.errors import ModelNotAllowed, ModelNotPriced
from billing.models import LedgerEntry, PeriodSpend, Price, Reservation
from billing.selectors import models_billable
from llm.models import ModelConfig

from .conftest import TEST_MODEL, authorize, fresh, settle, usage_for

PRICEY = "pricey-model"  # ten times the test model's price


def price(model: str, inp: str, out: str) -> Price:
    return Price.objects.create(
        model=model, effective_at=datetime(2020, 1, 1, tzinfo=UTC), input_per_mtok=Decimal(inp),
        output_per_mtok=Decimal(out),
    )  # fmt: skip


def allow(*aliases: str) -> None:
    for tier in Tier.objects.all():
        tier.allowed_models = [*tier.allowed_models, *aliases]
        tier.save()


@pytest.fixture
def pricey(test_model) -> Price:
    allow(PRICEY)
    return price(PRICEY, "10", "20")


@pytest.mark.django_db
def test_models_billable_keeps_the_fallbacks_the_plan_includes_and_prices():
    free = Tier.objects.get(slug="free")
    # The seeded Free plan's gemini-3-flash falls back to gemini-2.5-flash (a Pro model) and gpt-5.2-instant.
    assert models_billable(tier=free, aliases=["gemini-3-flash", "gemini-2.5-flash", "gpt-5.2-instant"]) == [
        "gemini-3-flash",
        "gpt-5.2-instant",
    ]
    pro = Tier.objects.get(slug="pro")
    assert models_billable(tier=pro, aliases=["gemini-3-flash", "gemini-2.5-flash", "gpt-5.2-instant"]) == [
        "gemini-3-flash",
        "gemini-2.5-flash",
        "gpt-5.2-instant",
    ]
    pro.allowed_models = [*pro.allowed_models, "unpriced-model"]
    assert models_billable(tier=pro, aliases=["gpt-5.2", "unpriced-model", "gpt-5.2", "claude-sonnet-4-5"]) == [
        "gpt-5.2",
        "claude-sonnet-4-5",
    ]  # no price: dropped; each alias once
    # The primary stays whatever it is: turn_authorize refuses it with the precise error.
    assert models_billable(tier=free, aliases=["claude-opus-4-5", "gpt-5.2-instant"]) == [
        "claude-opus-4-5",
        "gpt-5.2-instant",
    ]
    assert models_billable(tier=free, aliases=[]) == []


@pytest.mark.django_db
def test_models_billable_reads_prices_at_the_given_time():
    pro = Tier.objects.get(slug="pro")
    pro.allowed_models = [*pro.allowed_models, "later-model"]
    Price.objects.create(model="later-model", effective_at=timezone.now() + timedelta(days=1), input_per_mtok=1)
    assert models_billable(tier=pro, aliases=["gpt-5.2", "later-model"]) == ["gpt-5.2"]
    assert models_billable(tier=pro, aliases=["gpt-5.2", "later-model"], at=timezone.now() + timedelta(days=2)) == [
        "gpt-5.2",
        "later-model",
    ]


@pytest.mark.django_db
def test_a_cheap_model_with_a_dear_fallback_reserves_the_dear_worst_case(org_a, pricey):
    auth = authorize(org_a.member, models=[TEST_MODEL, PRICEY], prompt_tokens=1000, max_output_tokens=1000)
    # 1000 + 1000 tokens: $0.003 on the test model, $0.03 on its fallback
    assert auth.reserved_cost == Decimal("0.03")
    assert auth.model == TEST_MODEL and auth.models == (TEST_MODEL, PRICEY)
    assert Reservation.objects.get(id=auth.reservation_id).amount == Decimal("0.03")
    org = PeriodSpend.objects.get(organization=org_a.organization, membership__isnull=True)
    assert org.reserved == Decimal("0.03")
    # The fallback answered: billed at its own price, within the reservation.
    cost = settle(auth, org_a.member, [usage_for(auth, model=PRICEY)])
    assert cost == Decimal("0.03") <= auth.reserved_cost
    entry = LedgerEntry.objects.get(turn_request_id=auth.request_id)
    assert entry.model == PRICEY and entry.input_per_mtok == Decimal("10")
    org.refresh_from_db()
    assert org.reserved == 0 and org.spent == Decimal("0.03")


@pytest.mark.django_db
def test_the_primary_answering_is_billed_at_its_own_price(org_a, pricey):
    auth = authorize(org_a.member, models=[TEST_MODEL, PRICEY])
    assert settle(auth, org_a.member, [usage_for(auth, model=TEST_MODEL)]) == Decimal("0.003")


@pytest.mark.django_db
def test_the_worst_case_is_per_call_and_each_model_stops_at_its_own_output_limit(org_a, pricey):
    # The dear fallback writes at most 100 tokens: 1000 × $10 + 100 × $20 per million = $0.012.
    ModelConfig.objects.create(
        alias=PRICEY, provider="demo", vendor_model="parley-demo", context_window=100_000, max_output_tokens=100
    )
    auth = authorize(org_a.member, models=[TEST_MODEL, PRICEY], prompt_tokens=1000, max_output_tokens=1000)
    assert auth.reserved_cost == Decimal("0.012")
    assert auth.max_output_tokens == 1000  # the primary may still write its 1000
    # A tool loop of two calls: each prompt grows by a whole answer (1000), the dearest model per call.
    auth = authorize(org_a.member, models=[TEST_MODEL, PRICEY], prompt_tokens=1000, max_calls=2)
    assert auth.reserved_cost == Decimal("0.012") + Decimal("0.022")


@pytest.mark.django_db
def test_a_fallback_the_plan_does_not_include_is_refused(org_a, test_model):
    price(PRICEY, "10", "20")  # priced, but on no plan
    with pytest.raises(ModelNotAllowed) as refused:
        authorize(org_a.member, models=[TEST_MODEL, PRICEY])
    assert PRICEY in refused.value.message and "fallback" in refused.value.message
    assert models_billable(tier=fresh(org_a.member).organization.tier, aliases=[TEST_MODEL, PRICEY]) == [TEST_MODEL]
    assert not Reservation.objects.filter(organization=org_a.organization).exists()


@pytest.mark.django_db
def test_an_unpriced_fallback_is_refused(org_a, test_model):
    allow("unpriced-model")
    with pytest.raises(ModelNotPriced) as refused:
        authorize(org_a.member, models=[TEST_MODEL, "unpriced-model"])
    assert "unpriced-model" in refused.value.message


@pytest.mark.django_db
def test_models_default_to_the_primary_alone_and_repeat_the_primary_harmlessly(org_a, pricey):
    assert authorize(org_a.member).models == (TEST_MODEL,)
    auth = authorize(org_a.member, model=TEST_MODEL, models=[TEST_MODEL, TEST_MODEL])
    assert auth.models == (TEST_MODEL,) and auth.reserved_cost == Decimal("0.003")


@pytest.mark.django_db
def test_a_retried_authorization_covers_the_same_models(org_a, pricey):
    first = authorize(org_a.member, models=[TEST_MODEL, PRICEY], rid="retried")
    again = authorize(org_a.member, models=[TEST_MODEL, PRICEY], rid="retried")
    assert again == first and again.reserved_cost == Decimal("0.03")
