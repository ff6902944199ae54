"""Billing fixtures: a priced test model on the pro tier, and a helper to authorize turns."""

import itertools
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from accounts.models import Membership, Tier
from billing import limits
from billing.models import Price
from billing.reservations import rate_limit_policies_forget, turn_authorize
from billing.selectors import prices_forget
from billing.settlement import turn_settle
from llm.types import Usage

TEST_MODEL = "test-model"
_turns = itertools.count(1)


def ensure_test_model(**tier_overrides) -> Price:
    """Price the test model at $1 / $2 per million tokens, allow it on every tier, lift the rate limits."""
    price, _ = Price.objects.get_or_create(
        model=TEST_MODEL,
        effective_at=datetime(2020, 1, 1, tzinfo=UTC),
        defaults={"input_per_mtok": Decimal("1"), "output_per_mtok": Decimal("2"), "cached_input_per_mtok": Decimal("0.5")},
    )
    for tier in Tier.objects.all():
        if TEST_MODEL not in tier.allowed_models:
            tier.allowed_models = [*tier.allowed_models, TEST_MODEL]
        tier.requests_per_minute = tier_overrides.get("requests_per_minute", 1_000_000)
        tier.tokens_per_minute = tier_overrides.get("tokens_per_minute", 1_000_000_000)
        tier.save()
    return price


@pytest.fixture
def test_model(db) -> Price:
    return ensure_test_model()


@pytest.fixture(autouse=True)
def _fresh_memory_windows():
    limits.limiter().forget()  # its windows and the refusals it remembers
    rate_limit_policies_forget()
    prices_forget()  # a rolled-back test's prices must not outlive it
    yield


def request_id() -> str:
    return f"turn-{uuid.uuid4()}-{next(_turns)}"


def fresh(membership) -> Membership:
    """The membership as a request would load it (tier edits made by a test are seen)."""
    return Membership.objects.select_related("organization__tier", "user").get(pk=membership.pk)


def authorize(membership, *, model=TEST_MODEL, prompt_tokens=1000, max_output_tokens=1000, api_key=None, rid=None,
              longest_message_chars=10, models=(), max_calls=1):
    return turn_authorize(
        membership=fresh(membership),
        api_key=api_key,
        model=model,
        models=models,
        max_calls=max_calls,
        prompt_tokens=prompt_tokens,
        longest_message_chars=longest_message_chars,
        max_output_tokens=max_output_tokens,
        request_id=rid or request_id(),
    )


def usage_for(auth, *, input_tokens=1000, output_tokens=1000, cached=0, estimated=False, suffix="0", model=None):
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        call_id=f"{auth.request_id}:{suffix}",
        model=model or auth.model,
        provider="test",
        estimated=estimated,
    )


def settle(auth, membership, usages=None, **kw):
    if usages is None:
        usages = [usage_for(auth)]
    return turn_settle(authorization=auth, usages=usages, membership=fresh(membership), **kw)
