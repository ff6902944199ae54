from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.errors import ModelNotPriced
from billing.models import LedgerEntry, Price
from billing.selectors import price_for

from .conftest import authorize, settle, usage_for


@pytest.mark.django_db
def test_seeded_list_prices():
    expected = {
        "gpt-5.2-instant": ("1.75", "7.00"),
        "claude-sonnet-4-5": ("3.00", "15.00"),
        "claude-opus-4-5": ("5.00", "25.00"),
        "claude-haiku-4-5": ("1.00", "5.00"),
        "gemini-3-flash": ("0.20", "0.60"),
        "gemini-2.5-flash": ("0.175", "0.70"),
    }
    for model, (inp, out) in expected.items():
        price = price_for(model)
        assert price is not None, model
        assert price.input_per_mtok == Decimal(inp) and price.output_per_mtok == Decimal(out)
        assert price.source_date is not None
    assert price_for("gpt-5.2") is not None and price_for("gemini-3-pro") is not None
    assert price_for("demo").is_free


@pytest.mark.django_db
def test_a_model_without_a_price_cannot_be_used(org_a, test_model):
    tier = org_a.organization.tier
    tier.allowed_models = [*tier.allowed_models, "unpriced-model"]
    tier.save()
    with pytest.raises(ModelNotPriced) as refused:
        authorize(org_a.member, model="unpriced-model")
    assert refused.value.code == "model_not_allowed"
    assert "no price" in refused.value.message


@pytest.mark.django_db
def test_a_price_that_takes_effect_later_is_not_used_yet(org_a, test_model):
    Price.objects.create(model="later-model", effective_at=timezone.now() + timedelta(days=1), input_per_mtok=1)
    tier = org_a.organization.tier
    tier.allowed_models = [*tier.allowed_models, "later-model"]
    tier.save()
    with pytest.raises(ModelNotPriced):
        authorize(org_a.member, model="later-model")


@pytest.mark.django_db
def test_demo_is_free(org_a):
    auth = authorize(org_a.member, model="demo")
    assert auth.reserved_cost == 0
    assert settle(auth, org_a.member, [usage_for(auth, input_tokens=500, output_tokens=900)]) == 0
    assert LedgerEntry.objects.get(turn_request_id=auth.request_id).cost == 0


@pytest.mark.django_db
def test_price_change_applies_to_new_calls_only(org_a, test_model):
    first = authorize(org_a.member)
    assert settle(first, org_a.member) == Decimal("0.003")  # 1000 × $1 + 1000 × $2 per million
    Price.objects.create(
        model=test_model.model, effective_at=timezone.now(), input_per_mtok=Decimal("10"), output_per_mtok=Decimal("20")
    )
    second = authorize(org_a.member)
    assert second.reserved_cost == Decimal("0.03")
    assert settle(second, org_a.member) == Decimal("0.03")
    old = LedgerEntry.objects.get(turn_request_id=first.request_id)
    assert old.cost == Decimal("0.003") and old.input_per_mtok == Decimal("1")
    new = LedgerEntry.objects.get(turn_request_id=second.request_id)
    assert new.input_per_mtok == Decimal("10") and new.output_per_mtok == Decimal("20")


@pytest.mark.django_db
def test_cached_input_is_billed_at_its_own_price(org_a, test_model):
    auth = authorize(org_a.member)
    cost = settle(auth, org_a.member, [usage_for(auth, input_tokens=1000, output_tokens=0, cached=2000)])
    assert cost == Decimal("0.002")  # 1000 × $1 + 2000 × $0.5 per million


@pytest.mark.django_db
def test_ledger_rows_are_immutable(org_a, test_model):
    auth = authorize(org_a.member)
    settle(auth, org_a.member)
    entry = LedgerEntry.objects.get(turn_request_id=auth.request_id)
    entry.cost = Decimal(0)
    with pytest.raises(TypeError):
        entry.save()
    with pytest.raises(TypeError):
        entry.delete()
    with pytest.raises(TypeError):
        LedgerEntry.objects.filter(pk=entry.pk).update(cost=0)
