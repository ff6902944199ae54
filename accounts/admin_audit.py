"""Staff changes made in the Django admin leave audit events too.

`AuditedAdmin` (a ModelAdmin mixin) records `<name>.create`, `<name>.change` (with the changed
fields, before and after) and `<name>.delete` for every save and delete the admin makes, in the
admin's own transaction. `audit_name` sets the dotted prefix (default: the model's name), e.g.
`audit_name = "price"` gives `price.change`. The organization of the event is the object's
`organization` when it has one (so owners see it in their audit log), or the object itself when it
is an Organization.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from accounts.audit import audit_record, changes_between
from accounts.models import Organization


def _value(value: Any) -> Any:
    """A form value as it reads in an event: model instances by pk, querysets as pk lists."""
    if isinstance(value, models.Model):
        return str(value.pk)
    if isinstance(value, models.QuerySet | list | tuple | set):
        return sorted(str(getattr(item, "pk", item)) for item in value)
    return value


def organization_of(obj: Any):
    if isinstance(obj, Organization):
        return obj.pk
    return getattr(obj, "organization_id", None)


class AuditedAdmin:
    audit_name: str | None = None

    def audit_prefix(self) -> str:
        return self.audit_name or self.model._meta.model_name

    def audit_changes(self, form, change: bool) -> dict[str, list]:
        fields = form.changed_data if change else list(form.cleaned_data)
        before = {name: _value(form.initial.get(name)) for name in fields} if change else {}
        after = {name: _value(form.cleaned_data.get(name)) for name in fields}
        return changes_between(before, after)

    def save_model(self, request, obj, form, change):
        changes = self.audit_changes(form, change)
        super().save_model(request, obj, form, change)
        if change and not changes:
            return
        audit_record(
            f"{self.audit_prefix()}.{'change' if change else 'create'}",
            organization=organization_of(obj),
            target=obj,
            changes=changes,
        )

    def delete_model(self, request, obj):
        self._audit_delete(obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self._audit_delete(obj)
        super().delete_queryset(request, queryset)

    def _audit_delete(self, obj) -> None:
        audit_record(f"{self.audit_prefix()}.delete", organization=organization_of(obj), target=obj)
