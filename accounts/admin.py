"""The accounts admin: staff changes are audited, the audit log itself is read-only.

- Every save and delete of tiers, users, API keys, invitations and (inline) memberships leaves an
  event (`AuditedAdmin`, accounts/admin_audit.py): `tier.*`, `user.*`, `api_key.*`, `invitation.*`,
  `membership.*`. Passwords never go into an event: the add form's passwords are left out, and the
  admin's password form records only that the password changed.
- Organizations: "Suspend" (with the reason typed next to the action) and "Reactivate" call
  accounts.oversight; a tier changed in the change form goes through `organization_tier_change`
  (one `organization.tier_change` event, not a generic change); the suspension fields are read-only.
- `AuditEvent` is view-only (no add, change or delete, whoever asks) and stays fast on millions of
  rows: no joins in the list, the organization names of a page in one query, no full count, and a
  page count capped at `AUDIT_COUNT_CAP` rows (filter by date or organization to go further back).
- `ContentAccessGrant` (break-glass grants) is view-only here; they are asked for elsewhere.
"""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q
from django.utils.functional import cached_property

from accounts.admin_audit import AuditedAdmin, _value
from accounts.audit import REDACTED, audit_record, changes_between, is_secret_field
from accounts.errors import InvalidInput
from accounts.models import (
    ApiKey,
    AuditEvent,
    ContentAccessGrant,
    Invitation,
    Membership,
    Organization,
    Tier,
    User,
)
from accounts.oversight import organization_reactivate, organization_suspend, organization_tier_change

_EXACT_ID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")

# --- Users ------------------------------------------------------------------------------------

_PASSWORD_FORM_FIELDS = {"password", "password1", "password2", "usable_password", "set_usable_password"}


class AuditedPasswordChangeForm(AdminPasswordChangeForm):
    """The admin's "change password" form: records that the password changed, never the password."""

    def save(self, commit: bool = True):
        user = super().save(commit=commit)
        audit_record("user.change", target=user, changes={"password": [REDACTED, REDACTED]})
        return user


@admin.register(User)
class UserAdmin(AuditedAdmin, BaseUserAdmin):
    audit_name = "user"
    change_password_form = AuditedPasswordChangeForm
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def audit_changes(self, form, change: bool) -> dict[str, list]:
        changes = super().audit_changes(form, change)
        return {
            name: value
            for name, value in changes.items()
            if name not in _PASSWORD_FORM_FIELDS and not is_secret_field(name)
        }

    def user_change_password(self, request, id, form_url=""):
        with transaction.atomic():  # the new password and its event commit together
            return super().user_change_password(request, id, form_url)


# --- Tiers, keys, invitations -------------------------------------------------------------------


@admin.register(Tier)
class TierAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "tier"
    list_display = [
        "name",
        "slug",
        "monthly_budget_usd",
        "requests_per_minute",
        "tokens_per_minute",
        "max_output_tokens",
    ]


@admin.register(Invitation)
class InvitationAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "invitation"
    list_display = ["email", "organization", "role", "created_at", "expires_at", "accepted_at"]
    list_filter = ["role"]
    search_fields = ["email", "organization__name"]
    exclude = ["token"]


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "api_key"
    list_display = ["name", "prefix", "organization", "user", "created_at", "expires_at", "revoked_at", "last_used_at"]
    search_fields = ["name", "prefix", "organization__name", "user__email"]
    readonly_fields = ["prefix", "hashed_secret", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        # A key's secret is shown once to the member who makes it (the API keys page); a key made
        # here would have no secret at all.
        return False


# --- Organizations ------------------------------------------------------------------------------


class MembershipInline(admin.TabularInline):
    """Changes are recorded by OrganizationAdmin.save_formset (membership.*)."""

    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class OrganizationActionForm(ActionForm):
    reason = forms.CharField(
        required=False,
        max_length=Organization._meta.get_field("suspended_reason").max_length,
        label="Reason (for Suspend, shown to its members)",
        widget=forms.TextInput(attrs={"size": 40}),
    )


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "organization"
    list_display = ["name", "slug", "tier", "is_personal", "suspended_at", "created_at"]
    list_filter = ["tier", "is_personal", ("suspended_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "slug"]
    readonly_fields = ["suspended_at", "suspended_reason"]
    inlines = [MembershipInline]
    action_form = OrganizationActionForm
    actions = ["suspend", "reactivate"]

    @admin.action(description="Suspend the selected organizations (type the reason first)")
    def suspend(self, request, queryset) -> None:
        reason = " ".join((request.POST.get("reason") or "").split())
        if not reason:
            self.message_user(
                request, "Type the reason for the suspension (its members will read it), then suspend.", messages.ERROR
            )
            return
        done, already = [], []
        for organization in queryset:
            try:
                changed = organization_suspend(organization=organization, reason=reason)
            except InvalidInput as exc:
                self.message_user(request, exc.message, messages.ERROR)
                return
            (done if changed else already).append(organization.name)
        if done:
            self.message_user(request, f"Suspended: {', '.join(done)}.", messages.SUCCESS)
        if already:
            self.message_user(request, f"Already suspended (unchanged): {', '.join(already)}.", messages.WARNING)

    @admin.action(description="Reactivate the selected organizations")
    def reactivate(self, request, queryset) -> None:
        done, already = [], []
        for organization in queryset:
            (done if organization_reactivate(organization=organization) else already).append(organization.name)
        if done:
            self.message_user(request, f"Reactivated: {', '.join(done)}.", messages.SUCCESS)
        if already:
            self.message_user(request, f"Not suspended (unchanged): {', '.join(already)}.", messages.WARNING)

    def audit_changes(self, form, change: bool) -> dict[str, list]:
        changes = super().audit_changes(form, change)
        if change:
            changes.pop("tier", None)  # recorded by organization_tier_change
        return changes

    def save_model(self, request, obj, form, change) -> None:
        new_tier = obj.tier if change and "tier" in form.changed_data else None
        if new_tier is not None:
            obj.tier = Tier.objects.get(pk=form.initial["tier"])  # the other fields are saved first
        super().save_model(request, obj, form, change)
        if new_tier is not None:
            organization_tier_change(organization=obj, tier=new_tier)

    def save_formset(self, request, form, formset, change) -> None:
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        events = []
        for item in formset.forms:
            instance = item.instance
            if formset.can_delete and formset._should_delete_form(item):
                if not instance._state.adding:  # named now: deleting it clears its pk
                    events.append(("membership.remove", _target(instance), {"role": [instance.role, None]}))
                continue
            if not item.has_changed():
                continue
            if instance._state.adding:
                after = {name: _value(item.cleaned_data.get(name)) for name in item.changed_data}
                events.append(("membership.create", instance, changes_between({}, after)))
                continue
            changed = [name for name in item.changed_data if name != "id"]
            before = {name: _value(item.initial.get(name)) for name in changed}
            after = {name: _value(item.cleaned_data.get(name)) for name in changed}
            changes = changes_between(before, after)
            if changes:
                events.append(
                    ("membership.role_change" if set(changes) == {"role"} else "membership.change", instance, changes)
                )
        super().save_formset(request, form, formset, change)
        for action, instance, changes in events:
            target = instance if isinstance(instance, Membership) else None
            fields = {} if target is not None else instance
            audit_record(action, organization=form.instance.pk, target=target, changes=changes, **fields)


def _target(membership: Membership) -> dict:
    return {"target_type": "membership", "target_id": membership.pk, "target_label": str(membership)}


# --- The audit log --------------------------------------------------------------------------------

AUDIT_COUNT_CAP = 10_000

# The dotted names services and the audited admins record (the filter offers these without reading
# the table: a DISTINCT over millions of rows would be the slowest part of the page).
KNOWN_ACTIONS = sorted(
    {
        "api_key.create", "api_key.revoke", "membership.invite", "invitation.revoke", "membership.join",
        "membership.role_change", "membership.remove", "organization.create", "organization.rename",
        "organization.tier_change", "organization.suspend", "organization.reactivate", "budget.update",
        "price.create", "price.change", "price.delete", "model.create", "model.change", "model.delete",
        "usage.export", "audit.export", "audit.purge", "auth.login", "auth.login_failed", "auth.logout",
        "auth.mfa_enable", "auth.mfa_disable", "auth.password_change", "auth.password_reset",
        "staff.content_access", "ledger.credit", "ledger.refund",
        "membership.create", "membership.change",
    }
    | {f"{name}.{verb}" for name in ("tier", "user", "api_key", "invitation", "organization") for verb in ("create", "change", "delete")}
)  # fmt: skip


class ActionFilter(admin.SimpleListFilter):
    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return [(name, name) for name in KNOWN_ACTIONS]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value.endswith(".*"):  # a whole family: ?action=membership.*
            return queryset.filter(action__startswith=value[:-1])
        return queryset.filter(action=value)


class CappedCountPaginator(Paginator):
    """Counts at most AUDIT_COUNT_CAP rows (one LIMITed subquery), not millions."""

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[:AUDIT_COUNT_CAP].count()


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(_ReadOnlyAdmin):
    list_display = ["created_at", "action", "actor_type", "actor_label", "organization_name", "target_type",
                    "target_label", "ip_address", "request_id"]  # fmt: skip
    list_filter = ["organization", "actor_type", ActionFilter, ("created_at", admin.DateFieldListFilter)]
    search_fields = ["actor_label", "target_label", "=target_id", "=request_id"]
    # No date_hierarchy: its year list is a DISTINCT over the whole table (the date filter is enough).
    list_select_related = False
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50
    ordering = ["-created_at", "-sequence"]

    def get_search_results(self, request, queryset, search_term):
        # An id (a request id, or an object's UUID) is looked up exactly, on its index; anything
        # else is a substring of the actor's or target's label (a scan, seconds on millions of rows).
        term = search_term.strip()
        if _EXACT_ID.fullmatch(term):
            return queryset.filter(Q(request_id=term) | Q(target_id=term)), False
        return super().get_search_results(request, queryset, search_term)

    def get_queryset(self, request):
        # One query for the organizations of the page shown (never a join over the whole table).
        return super().get_queryset(request).prefetch_related("organization")

    @admin.display(description="organization")
    def organization_name(self, event: AuditEvent) -> str:
        if event.organization_id is None:
            return "—"
        return event.organization.name if event.organization is not None else str(event.organization_id)


@admin.register(ContentAccessGrant)
class ContentAccessGrantAdmin(_ReadOnlyAdmin):
    list_display = ["staff_user", "organization", "created_at", "expires_at", "revoked_at", "is_active"]
    list_filter = ["organization", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["staff_user__email", "organization__name", "reason"]
    list_select_related = ["staff_user", "organization"]

    @admin.display(boolean=True, description="active")
    def is_active(self, grant: ContentAccessGrant) -> bool:
        return grant.is_active
