from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.utils import timezone

from billing.models import LedgerEntry, PeriodSpend, Reservation, ReservationStatus
from billing.settlement import reservations_release_expired
from billing.tasks import reservations_release_expired as release_task

from .conftest import authorize, settle, usage_for


def counters(membership):
    org = PeriodSpend.objects.get(organization=membership.organization, membership__isnull=True)
    own = PeriodSpend.objects.get(organization=membership.organization, membership=membership)
    return org, own


@pytest.mark.django_db
def test_authorize_reserves_worst_case_and_settle_releases_the_rest(org_a, test_model):
    auth = authorize(org_a.member, prompt_tokens=1000, max_output_tokens=1000)
    assert auth.reserved_cost == Decimal("0.003")
    org, own = counters(org_a.member)
    assert org.reserved == own.reserved == Decimal("0.003") and org.spent == 0
    cost = settle(auth, org_a.member, [usage_for(auth, input_tokens=1000, output_tokens=250)])
    assert cost == Decimal("0.0015")
    org, own = counters(org_a.member)
    assert org.reserved == own.reserved == 0
    assert org.spent == own.spent == Decimal("0.0015")
    assert Reservation.objects.get(id=auth.reservation_id).status == ReservationStatus.SETTLED


@pytest.mark.django_db
def test_settling_the_same_request_twice_charges_once(org_a, test_model):
    auth = authorize(org_a.member)
    usages = [usage_for(auth, suffix="0"), usage_for(auth, suffix="1", output_tokens=10)]
    first = settle(auth, org_a.member, usages)
    second = settle(auth, org_a.member, usages)
    assert first == second == Decimal("0.003") + Decimal("0.00102")
    assert LedgerEntry.objects.filter(turn_request_id=auth.request_id).count() == 2
    org, own = counters(org_a.member)
    assert org.spent == own.spent == first
    assert org.reserved == 0


@pytest.mark.django_db
def test_a_retry_with_an_extra_call_bills_only_the_new_call(org_a, test_model):
    auth = authorize(org_a.member)
    settle(auth, org_a.member, [usage_for(auth, suffix="0")])
    total = settle(auth, org_a.member, [usage_for(auth, suffix="0"), usage_for(auth, suffix="1")])
    assert total == Decimal("0.006")
    assert counters(org_a.member)[0].spent == Decimal("0.006")


@pytest.mark.django_db
def test_stopped_answer_is_billed_for_what_was_generated(org_a, test_model):
    auth = authorize(org_a.member, prompt_tokens=800, max_output_tokens=1000)
    # The provider reported nothing: llm counted the prompt and the streamed text.
    estimated = usage_for(auth, input_tokens=800, output_tokens=37, estimated=True)
    cost = settle(auth, org_a.member, [estimated])
    assert cost == Decimal("0.000874") and cost > 0
    entry = LedgerEntry.objects.get(turn_request_id=auth.request_id)
    assert entry.estimated and entry.output_tokens == 37
    assert counters(org_a.member)[0].reserved == 0


@pytest.mark.django_db
def test_a_turn_without_provider_calls_releases_its_reservation(org_a, test_model):
    auth = authorize(org_a.member)
    assert settle(auth, org_a.member, []) == 0
    org, _ = counters(org_a.member)
    assert org.reserved == 0 and org.spent == 0


@pytest.mark.django_db
def test_usage_without_call_id_gets_one_from_the_request(org_a, test_model):
    from llm.types import Usage

    auth = authorize(org_a.member)
    usage = Usage(input_tokens=10, output_tokens=10)
    settle(auth, org_a.member, [usage])
    settle(auth, org_a.member, [usage])
    assert LedgerEntry.objects.filter(request_id=f"{auth.request_id}:0").count() == 1


@pytest.mark.django_db
def test_ledger_row_records_who_what_and_where(org_a, test_model, api_key_factory):
    import uuid

    key, _ = api_key_factory(org_a.member)
    auth = authorize(org_a.member, api_key=key)
    conversation_id, message_id = uuid.uuid4(), uuid.uuid4()
    settle(auth, org_a.member, api_key=key, conversation_id=conversation_id, message_id=message_id)
    entry = LedgerEntry.objects.get(turn_request_id=auth.request_id)
    assert entry.organization_id == org_a.organization.id
    assert entry.membership_id == org_a.member.id and entry.api_key_id == key.id
    assert entry.conversation_id == conversation_id and entry.message_id == message_id
    assert entry.model == "test-model" and entry.provider == "test"


@pytest.mark.django_db
def test_authorizing_the_same_request_twice_reserves_once(org_a, test_model):
    auth = authorize(org_a.member, rid="same-request")
    again = authorize(org_a.member, rid="same-request")
    assert again == auth
    assert counters(org_a.member)[0].reserved == auth.reserved_cost


@pytest.mark.django_db
def test_expired_reservations_are_released_and_a_late_settle_still_bills_once(org_a, test_model):
    auth = authorize(org_a.member)
    later = timezone.now() + timedelta(hours=1)
    assert reservations_release_expired(now=later) == 1
    assert reservations_release_expired(now=later) == 0
    org, own = counters(org_a.member)
    assert org.reserved == own.reserved == 0
    assert Reservation.objects.get(id=auth.reservation_id).status == ReservationStatus.EXPIRED
    # The process was only slow, not dead: its settle bills, and releases nothing twice.
    assert settle(auth, org_a.member) == Decimal("0.003")
    org, own = counters(org_a.member)
    assert org.reserved == 0 and org.spent == Decimal("0.003")


@pytest.mark.django_db
def test_release_task_runs_the_service(org_a, test_model):
    authorize(org_a.member)
    with mock.patch("django.utils.timezone.now", return_value=timezone.now() + timedelta(hours=1)):
        assert release_task.delay().get() == 1


@pytest.mark.django_db
def test_a_tool_loop_reserves_every_call_it_may_make(org_a, test_model):
    from billing.reservations import turn_authorize

    from .conftest import fresh, request_id

    auth = turn_authorize(
        membership=fresh(org_a.member), model="test-model", prompt_tokens=1000, longest_message_chars=10,
        max_output_tokens=1000, request_id=request_id(), max_calls=3,
    )  # fmt: skip
    # calls with prompts of 1000, 2000 and 3000 tokens, each answering up to 1000: $0.006 input + $0.006 output
    assert auth.reserved_cost == Decimal("0.012")
    usages = [usage_for(auth, suffix=str(n), input_tokens=1000 + 1000 * n) for n in range(3)]
    assert settle(auth, org_a.member, usages) == Decimal("0.012")
    assert counters(org_a.member)[0].reserved == 0
