"""The money side of the audit trail: budgets, prices, models, usage exports and credits each leave
exactly one event (actor, organization, target, before/after); a change that fails leaves none."""

from __future__ import annotations

from decimal import Decimal
from unittest import mock

import pytest

from accounts.audit import audit_actor
from accounts.errors import InvalidInput, PermissionDenied
from accounts.models import ActorType, AuditEvent
from billing.budgets import member_budget_set, organization_budget_set
from billing.credits import ledger_credit
from billing.models import Budget, LedgerEntry, Price
from llm.models import ModelConfig

from .conftest import fresh

# The actions of this app's changes (other apps' services record theirs too, e.g. organization.create).
MONEY = {
    "budget.update", "budget.create", "budget.change", "budget.delete", "price.create", "price.change",
    "price.delete", "model.create", "model.change", "model.delete", "usage.export", "ledger.credit", "ledger.refund",
}  # fmt: skip


def events(action: str | None = None):
    rows = AuditEvent.objects.filter(action__in=MONEY).order_by("created_at", "sequence")
    return list(rows.filter(action=action) if action else rows)


def only(action: str) -> AuditEvent:
    found = events(action)
    assert len(found) == 1, [(e.action, e.changes) for e in found]
    return found[0]


@pytest.fixture
def staff(user_factory):
    return user_factory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


# --- budget.update: the services --------------------------------------------------------------


@pytest.mark.django_db
def test_member_budget_set_records_one_event_and_the_same_value_none(org_a):
    with audit_actor(user=org_a.admin.user, ip_address="203.0.113.9", user_agent="pytest"):
        member_budget_set(actor=fresh(org_a.admin), member=org_a.member, monthly_limit_usd=Decimal("12.5"))
    event = only("budget.update")
    assert event.actor_type == ActorType.USER and event.actor_user_id == org_a.admin.user_id
    assert event.organization_id == org_a.organization.id
    assert (event.target_type, event.target_id) == ("membership", str(org_a.member.id))
    assert org_a.member.user.email in event.target_label
    assert event.changes == {"monthly_limit_usd": [None, "12.5000"]}
    assert event.ip_address == "203.0.113.9" and event.user_agent == "pytest"

    with audit_actor(user=org_a.admin.user):
        member_budget_set(actor=fresh(org_a.admin), member=org_a.member, monthly_limit_usd=Decimal("12.50"))
    assert len(events("budget.update")) == 1  # the same value: no change, no event

    with audit_actor(user=org_a.owner.user):
        member_budget_set(actor=fresh(org_a.owner), member=org_a.member, monthly_limit_usd=Decimal("20"))
        member_budget_set(actor=fresh(org_a.owner), member=org_a.member, monthly_limit_usd=None)
        member_budget_set(actor=fresh(org_a.owner), member=org_a.member, monthly_limit_usd=None)  # nothing to remove
    changes = [e.changes["monthly_limit_usd"] for e in events("budget.update")]
    assert changes == [[None, "12.5000"], ["12.5000", "20.0000"], ["20.0000", None]]
    assert not Budget.objects.filter(membership=org_a.member).exists()


@pytest.mark.django_db
def test_organization_budget_set_targets_the_organization(org_a):
    with audit_actor(system="manage.py test"):
        organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("40"))
    event = only("budget.update")
    assert event.actor_type == ActorType.SYSTEM and event.actor_label == "manage.py test"
    assert event.organization_id == org_a.organization.id
    assert (event.target_type, event.target_id) == ("organization", str(org_a.organization.id))
    assert event.changes == {"monthly_limit_usd": [None, "40.0000"]}
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("40.0000"))
    assert len(events("budget.update")) == 1


@pytest.mark.django_db
def test_a_refused_or_failing_budget_change_writes_no_event(org_a, org_b):
    with pytest.raises(PermissionDenied):
        member_budget_set(actor=fresh(org_a.member), member=org_a.admin, monthly_limit_usd=Decimal(1))
    with pytest.raises(PermissionDenied):
        member_budget_set(actor=fresh(org_a.admin), member=org_b.member, monthly_limit_usd=Decimal(1))
    with pytest.raises(InvalidInput):
        member_budget_set(actor=fresh(org_a.admin), member=org_a.member, monthly_limit_usd=Decimal(-1))
    with pytest.raises(InvalidInput):
        organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("NaN"))
    assert events() == [] and not Budget.objects.exists()

    # The event is written in the change's transaction: if recording fails, the change is undone too.
    organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("5"))
    with (
        mock.patch("billing.budgets.audit_record", side_effect=RuntimeError("audit down")),
        pytest.raises(RuntimeError),
    ):
        organization_budget_set(organization=org_a.organization, monthly_limit_usd=Decimal("500"))
    assert Budget.objects.get(organization=org_a.organization).monthly_limit_usd == Decimal("5")
    assert len(events("budget.update")) == 1


@pytest.mark.django_db
def test_the_usage_page_form_records_the_member_budget(client, org_a):
    client.force_login(org_a.owner.user)
    response = client.post(
        f"/usage/members/{org_a.member.id}/budget/", {"monthly_limit_usd": "7.25"}, HTTP_USER_AGENT="browser/1"
    )
    assert response.status_code == 302
    event = only("budget.update")
    assert event.actor_user_id == org_a.owner.user_id and event.user_agent == "browser/1"
    assert event.changes == {"monthly_limit_usd": [None, "7.2500"]}


# --- budget.update: the admin -----------------------------------------------------------------


@pytest.mark.django_db
def test_admin_budget_add_change_and_delete_are_budget_updates(staff_client, staff, org_a, org_b):
    response = staff_client.post(
        "/admin/billing/budget/add/",
        {"organization": org_a.organization.id, "membership": "", "monthly_limit_usd": "100"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get(organization=org_a.organization, membership__isnull=True)
    event = only("budget.update")
    assert event.actor_type == ActorType.STAFF and event.actor_user_id == staff.id
    assert event.organization_id == org_a.organization.id
    assert (event.target_type, event.target_id) == ("organization", str(org_a.organization.id))
    assert event.changes == {"monthly_limit_usd": [None, "100.0000"]}
    assert not events("budget.create") and not events("budget.change")

    response = staff_client.post(f"/admin/billing/budget/{budget.pk}/change/", {"monthly_limit_usd": "150"})
    assert response.status_code == 302
    assert [e.changes for e in events("budget.update")][-1] == {"monthly_limit_usd": ["100.0000", "150.0000"]}
    staff_client.post(f"/admin/billing/budget/{budget.pk}/change/", {"monthly_limit_usd": "150.00"})
    assert len(events("budget.update")) == 2  # saved unchanged: no event

    # A member's budget from the admin targets the member; one of another organization is refused.
    refused = staff_client.post(
        "/admin/billing/budget/add/",
        {"organization": org_a.organization.id, "membership": org_b.member.id, "monthly_limit_usd": "3"},
    )
    assert refused.status_code == 200 and "not in this organization" in refused.content.decode()
    assert len(events("budget.update")) == 2
    staff_client.post(
        "/admin/billing/budget/add/",
        {"organization": org_a.organization.id, "membership": org_a.member.id, "monthly_limit_usd": "3"},
    )
    member_event = events("budget.update")[-1]
    assert (member_event.target_type, member_event.target_id) == ("membership", str(org_a.member.id))

    response = staff_client.post(f"/admin/billing/budget/{budget.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Budget.objects.filter(pk=budget.pk).exists()
    assert events("budget.update")[-1].changes == {"monthly_limit_usd": ["150.0000", None]}
    assert len(events("budget.update")) == 4 and not events("budget.delete")


# --- price.*: the admin -----------------------------------------------------------------------


def price_form(**overrides) -> dict:
    data = {
        "model": "audited-model",
        "effective_at_0": "2026-01-01",
        "effective_at_1": "00:00:00",
        "input_per_mtok": "1.5",
        "output_per_mtok": "6",
        "cached_input_per_mtok": "",
        "source": "test",
        "source_date": "",
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
    }
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_admin_price_create_change_delete_are_recorded(staff_client, staff):
    response = staff_client.post("/admin/billing/price/add/", price_form())
    assert response.status_code == 302, response.content.decode()[:3000]
    price = Price.objects.get(model="audited-model")
    created = only("price.create")
    assert created.actor_type == ActorType.STAFF and created.actor_user_id == staff.id
    assert created.organization_id is None  # a platform event
    assert (created.target_type, created.target_id) == ("price", str(price.pk))
    assert created.changes["input_per_mtok"] == [None, "1.5"] and created.changes["model"] == [None, "audited-model"]

    response = staff_client.post(f"/admin/billing/price/{price.pk}/change/", price_form(output_per_mtok="7"))
    assert response.status_code == 302
    changed = only("price.change")
    assert changed.changes == {"output_per_mtok": ["6.000000", "7"]}
    staff_client.post(f"/admin/billing/price/{price.pk}/change/", price_form(output_per_mtok="7"))
    assert len(events("price.change")) == 1  # saved unchanged

    # A change the form refuses writes nothing.
    refused = staff_client.post(f"/admin/billing/price/{price.pk}/change/", price_form(output_per_mtok="lots"))
    assert refused.status_code == 200 and len(events("price.change")) == 1
    assert Price.objects.get(pk=price.pk).output_per_mtok == Decimal("7")

    response = staff_client.post(f"/admin/billing/price/{price.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Price.objects.filter(pk=price.pk).exists()
    deleted = only("price.delete")
    assert deleted.target_id == str(price.pk) and deleted.actor_user_id == staff.id


# --- model.*: llm's admin, audited from billing ----------------------------------------------------


def model_form(config: ModelConfig, **overrides) -> dict:
    data = {
        "alias": config.alias,
        "display_name": config.display_name,
        "provider": config.provider,
        "vendor_model": config.vendor_model,
        "position": config.position,
        "context_window": config.context_window,
        "max_output_tokens": config.max_output_tokens,
        "fallbacks": "[]",
        "base_url": config.base_url,
        "api_key_env": config.api_key_env,
    }
    if config.enabled:
        data["enabled"] = "on"
    if config.supports_tools:
        data["supports_tools"] = "on"
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


@pytest.fixture
def model_config(db) -> ModelConfig:
    return ModelConfig.objects.create(
        alias="audit-demo", display_name="Audit demo", provider="demo", vendor_model="demo", position=500
    )


@pytest.mark.django_db
def test_admin_model_change_form_is_recorded(staff_client, staff, model_config):
    url = f"/admin/llm/modelconfig/{model_config.pk}/change/"
    assert staff_client.get(url).status_code == 200
    response = staff_client.post(url, model_form(model_config, display_name="Audit demo 2"))
    assert response.status_code == 302, response.content.decode()[:3000]
    event = only("model.change")
    assert event.actor_type == ActorType.STAFF and event.actor_user_id == staff.id
    assert (event.target_type, event.target_id, event.target_label) == (
        "modelconfig",
        str(model_config.pk),
        "audit-demo",
    )
    assert event.changes == {"display_name": ["Audit demo", "Audit demo 2"]}
    refused = staff_client.post(url, model_form(model_config, provider="no-such-provider"))
    assert refused.status_code == 200 and len(events("model.change")) == 1


@pytest.mark.django_db
def test_admin_model_list_edits_are_recorded(staff_client, staff, model_config):
    page = staff_client.get("/admin/llm/modelconfig/")
    assert page.status_code == 200
    formset = page.context["cl"].formset
    data = {
        "form-TOTAL_FORMS": str(len(formset.forms)),
        "form-INITIAL_FORMS": str(len(formset.forms)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for n, form in enumerate(formset.forms):
        config = form.instance
        data[f"form-{n}-id"] = str(config.pk)
        data[f"form-{n}-position"] = str(config.position)
        enabled = config.enabled
        if config.pk == model_config.pk:
            data[f"form-{n}-position"] = "7"
            enabled = False
        if enabled:
            data[f"form-{n}-enabled"] = "on"
    response = staff_client.post("/admin/llm/modelconfig/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    model_config.refresh_from_db()
    assert (model_config.enabled, model_config.position) == (False, 7)
    event = only("model.change")  # only the edited row
    assert event.target_id == str(model_config.pk) and event.actor_user_id == staff.id
    assert event.changes == {"enabled": [True, False], "position": [500, 7]}


# --- usage.export -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_csv_export_is_recorded_with_its_range(client, org_a, org_b):
    client.force_login(org_a.owner.user)
    response = client.get("/usage/export.csv?start=2026-11-05&end=2026-11-12", HTTP_USER_AGENT="exporter")
    assert response.status_code == 200
    b"".join(response.streaming_content)
    event = only("usage.export")
    assert event.actor_user_id == org_a.owner.user_id and event.actor_type == ActorType.USER
    assert event.organization_id == org_a.organization.id and event.user_agent == "exporter"
    assert (event.target_type, event.target_id) == ("organization", str(org_a.organization.id))
    assert event.changes == {
        "start": [None, "2026-11-05"],
        "end": [None, "2026-11-12"],
        "scope": [None, "organization"],
        "format": [None, "csv"],
    }

    client.force_login(org_a.member.user)
    client.get("/usage/export.csv?start=2026-11-01&end=2026-11-02")
    mine = events("usage.export")[-1]
    assert mine.changes["scope"] == [None, "member"] and mine.changes["member"] == [None, org_a.member.user.email]

    # A refused export (bad dates) is no export.
    assert client.get("/usage/export.csv?start=2026-11-05&end=2026-11-01").status_code == 400
    assert client.get("/usage/export.csv?start=yesterday").status_code == 400
    assert len(events("usage.export")) == 2
    assert not AuditEvent.objects.filter(organization_id=org_b.organization.id, action__in=MONEY).exists()


@pytest.mark.django_db
def test_api_ledger_export_is_recorded_with_the_key_as_actor(client, org_a, api_key_factory):
    key, secret = api_key_factory(org_a.admin)
    events_before = len(events())
    response = client.get(
        "/api/v1/usage/ledger/?start=2026-11-01&end=2026-11-08&limit=5", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 200, response.content
    assert len(events()) == events_before + 1
    event = only("usage.export")
    assert event.actor_type == ActorType.API_KEY and event.actor_api_key_id == key.id
    assert event.organization_id == org_a.organization.id
    assert event.changes == {
        "start": [None, "2026-11-01"],
        "end": [None, "2026-11-07"],
        "scope": [None, "organization"],
        "format": [None, "api"],
        "offset": [None, 0],
        "limit": [None, 5],
    }
    bad = client.get("/api/v1/usage/ledger/?limit=0", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert bad.status_code == 400 and len(events("usage.export")) == 1


# --- ledger.credit / ledger.refund ------------------------------------------------------------


@pytest.mark.django_db
def test_credit_and_refund_are_recorded(org_a, staff):
    with audit_actor(ip_address="198.51.100.4"):
        credit = ledger_credit(
            organization=org_a.organization, amount=Decimal("5"), reason="Outage on 3 Nov", staff_user=staff
        )
    event = only("ledger.credit")
    assert event.actor_type == ActorType.STAFF and event.actor_user_id == staff.id
    assert event.ip_address == "198.51.100.4"
    assert event.organization_id == org_a.organization.id
    assert (event.target_type, event.target_id) == ("ledgerentry", str(credit.pk))
    assert event.changes == {"amount": [None, "5"], "reason": [None, "Outage on 3 Nov"]}

    refund = ledger_credit(
        organization=org_a.organization, amount=Decimal("0.25"), reason="Double charge", kind="refund", staff_user=staff
    )
    event = only("ledger.refund")
    assert event.target_id == str(refund.pk) and event.changes == {
        "amount": [None, "0.25"],
        "reason": [None, "Double charge"],
    }
    assert len(events()) == 2


@pytest.mark.django_db
def test_a_refused_or_failing_credit_writes_nothing(org_a, staff):
    for bad in (
        {"amount": Decimal("0")},
        {"amount": Decimal("-1")},
        {"amount": 5},
        {"amount": 1.5},
        {"amount": Decimal("Infinity")},
        {"amount": Decimal("0.0000000000001")},  # 13 places: finer than the ledger
        {"reason": "   "},
        {"reason": "x" * 501},
        {"kind": "usage"},
    ):
        kwargs = {"organization": org_a.organization, "amount": Decimal("1"), "reason": "why", **bad}
        with pytest.raises(InvalidInput):
            ledger_credit(**kwargs, staff_user=staff)
    with (
        mock.patch("billing.credits.audit_record", side_effect=RuntimeError("audit down")),
        pytest.raises(RuntimeError),
    ):
        ledger_credit(organization=org_a.organization, amount=Decimal("1"), reason="why", staff_user=staff)
    assert events() == []
    assert not LedgerEntry.objects.exists()


@pytest.mark.django_db
def test_events_of_one_organization_are_not_in_another(org_a, org_b, staff):
    ledger_credit(organization=org_a.organization, amount=Decimal("1"), reason="a", staff_user=staff)
    organization_budget_set(organization=org_b.organization, monthly_limit_usd=Decimal("2"))
    assert {e.action for e in events() if e.organization_id == org_a.organization.id} == {"ledger.credit"}
    assert {e.action for e in events() if e.organization_id == org_b.organization.id} == {"budget.update"}
