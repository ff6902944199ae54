"""Billing in the Django admin. Staff changes to money are audited:

- prices: `price.create` / `price.change` / `price.delete` (accounts.admin_audit.AuditedAdmin);
- budgets: saved and deleted through billing.budgets (one `budget.update`, as the services write);
- models (llm's ModelConfig, whose admin cannot import accounts): `model.*`, list edits included;
- the ledger stays read-only; credits and refunds are new rows, granted from its changelist
  ("Grant credit or refund", billing.credits.ledger_credit: `ledger.credit` / `ledger.refund`).
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from accounts.admin_audit import AuditedAdmin
from accounts.errors import InvalidInput
from accounts.models import Organization
from billing.budgets import staff_budget_set
from billing.credits import CREDIT_KINDS, REASON_MAX, ledger_credit
from billing.models import COST, Budget, DailyUsage, LedgerEntry, PeriodSpend, Price, RateLimitPolicy, Reservation
from llm.admin import ModelConfigAdmin
from llm.models import ModelConfig


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Price)
class PriceAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "price"
    list_display = ["model", "effective_at", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "is_free", "source_date"]
    list_filter = ["is_free", "model"]
    search_fields = ["model"]
    ordering = ["model", "-effective_at"]


# --- the ledger, and credits ----------------------------------------------------------------------


class CreditForm(forms.Form):
    organization = forms.ModelChoiceField(
        queryset=Organization.objects.all(),
        to_field_name="slug",
        widget=forms.TextInput(attrs={"size": 40}),
        help_text="The organization's slug (as in its admin page).",
        error_messages={"invalid_choice": "No organization has that slug."},
    )
    amount = forms.DecimalField(
        min_value=Decimal("0"),
        max_digits=COST["max_digits"],
        decimal_places=COST["decimal_places"],
        help_text="US dollars, more than zero. It is taken off the organization's spend this month.",
    )
    kind = forms.ChoiceField(choices=[(kind.value, kind.label) for kind in CREDIT_KINDS])
    reason = forms.CharField(
        max_length=REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Shown to the organization's owners on their usage page and in the audit log.",
    )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "kind", "user_email", "model", "input_tokens", "output_tokens", "cost", "estimated", "note"]
    list_filter = ["kind", "model", "provider", "estimated"]
    search_fields = ["request_id", "turn_request_id", "user_email", "organization__name", "note"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]
    show_full_result_count = False
    change_list_template = "billing/admin/ledgerentry_change_list.html"

    def get_urls(self):
        grant = path(
            "grant-credit/",
            self.admin_site.admin_view(self.grant_credit_view),
            name="billing_ledgerentry_grant_credit",
        )
        return [grant, *super().get_urls()]

    @staticmethod
    def may_grant(request) -> bool:
        return request.user.has_perm("billing.add_ledgerentry")  # superusers, and staff given it

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "may_grant_credit": self.may_grant(request)})

    def grant_credit_view(self, request):
        if not self.may_grant(request):
            raise PermissionDenied
        form = CreditForm(request.POST or None, initial={"organization": request.GET.get("organization", "")})
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                entry = ledger_credit(
                    organization=data["organization"],
                    amount=data["amount"],
                    reason=data["reason"],
                    kind=data["kind"],
                    staff_user=request.user,
                )
            except InvalidInput as error:
                form.add_error(error.param if error.param in form.fields else None, error.message)
            else:
                messages.success(
                    request, f"{entry.get_kind_display()} of ${-entry.cost:f} granted to {data['organization'].name}."
                )
                return redirect("admin:billing_ledgerentry_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": "Grant credit or refund",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "billing/admin/grant_credit.html", context)


# --- budgets: through the budget service, so the admin writes the same budget.update ----------------


class BudgetForm(forms.ModelForm):
    class Meta:
        model = Budget
        fields = ["organization", "membership", "monthly_limit_usd"]

    def clean(self):
        cleaned = super().clean()
        organization, membership = cleaned.get("organization"), cleaned.get("membership")
        if organization is not None and membership is not None and membership.organization_id != organization.pk:
            self.add_error("membership", "That member is not in this organization.")
        if (cleaned.get("monthly_limit_usd") or 0) < 0:
            self.add_error("monthly_limit_usd", "A budget cannot be negative.")
        return cleaned


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    list_display = ["organization", "membership", "monthly_limit_usd", "updated_at"]
    search_fields = ["organization__name", "membership__user__email"]
    raw_id_fields = ["organization", "membership"]

    def get_readonly_fields(self, request, obj=None):
        # Whose budget it is stays fixed: another scope is another budget (add that one instead).
        return ["organization", "membership", "updated_at"] if obj is not None else ["updated_at"]

    def save_model(self, request, obj, form, change):
        budget = staff_budget_set(
            organization=obj.organization, membership=obj.membership, monthly_limit_usd=obj.monthly_limit_usd
        )
        if budget is not None:  # the admin's messages and log entry name the saved row
            obj.pk, obj.updated_at = budget.pk, budget.updated_at
            obj._state.adding, obj._state.db = False, budget._state.db

    def delete_model(self, request, obj):
        staff_budget_set(organization=obj.organization, membership=obj.membership, monthly_limit_usd=None)

    def delete_queryset(self, request, queryset):
        for budget in queryset.select_related("organization", "membership__user"):
            staff_budget_set(organization=budget.organization, membership=budget.membership, monthly_limit_usd=None)


@admin.register(PeriodSpend)
class PeriodSpendAdmin(ReadOnlyAdmin):
    list_display = ["organization", "membership", "period_start", "spent", "reserved", "alerted_75_at", "alerted_90_at"]
    list_filter = ["period_start"]
    search_fields = ["organization__name"]
    list_select_related = ["organization", "membership__user"]


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "model", "amount", "status", "expires_at"]
    list_filter = ["status"]
    search_fields = ["request_id", "organization__name"]
    list_select_related = ["organization"]


@admin.register(RateLimitPolicy)
class RateLimitPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "tier", "member_requests_per_minute", "member_tokens_per_minute", "api_key_requests_per_minute",
        "api_key_tokens_per_minute",
    ]  # fmt: skip


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    list_display = ["day", "organization", "membership", "model", "calls", "cost"]
    list_filter = ["day"]
    list_select_related = ["organization", "membership__user"]


# --- models: llm's admin, audited (llm imports no app, so the audit is added here) ---------------


class AuditedModelConfigAdmin(AuditedAdmin, ModelConfigAdmin):
    """model.create / model.change / model.delete, for the change form and the list's edits
    (enabled, position) alike: the changelist saves each edited row through `save_model`."""

    audit_name = "model"


if admin.site.is_registered(ModelConfig):
    admin.site.unregister(ModelConfig)
admin.site.register(ModelConfig, AuditedModelConfigAdmin)
