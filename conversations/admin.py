"""Conversations in the admin: metadata for staff, content only behind an audited break-glass grant.

By default staff (superusers included) see who, when, which model, how many tokens and what it cost,
never what members wrote or models answered: message content and tool calls, conversation titles,
summaries and system prompts, and persona prompts show a "Hidden — request access" placeholder.
A staff user asks for access to one organization with a written reason at
/admin/conversations/conversation/access/ (accounts.content_access.content_access_request, recorded
in that organization's audit log); while the grant lasts, that organization's rows show their
content, and no other's. Search never looks at content. Everything here is view only (content is
the members' record; changes go through the services, which audit them), and conversations and
messages cannot be deleted here (the confirmation page would name their titles, and nothing would
record the deletion). docs/privacy.md is the policy.

Rows are annotated with `parley_content_visible` in `get_queryset` (one EXISTS per list, the same
rule as `content_access_allowed`); a row without the annotation counts as hidden.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import ForeignKeyRawIdWidget
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts.content_access import (
    MAX_MINUTES,
    MIN_MINUTES,
    REASON_MAX_CHARS,
    REASON_MIN_CHARS,
    content_access_default_minutes,
    content_access_grants_active,
    content_access_request,
    content_access_revoke,
    content_visible_expression,
)
from accounts.errors import InvalidInput, NotFound, ParleyError
from accounts.models import Organization
from conversations.models import Conversation, Message, Persona

VISIBLE = "parley_content_visible"
ACCESS_URL_NAME = "conversations_conversation_access"
REVOKE_URL_NAME = "conversations_conversation_access_revoke"


def _visible(obj) -> bool:
    return getattr(obj, VISIBLE, False) is True


def _hidden(organization_id) -> str:
    url = reverse(f"admin:{ACCESS_URL_NAME}")
    return format_html(
        '<span class="parley-content-hidden">Hidden — <a href="{}?organization={}">request access</a></span>',
        url,
        organization_id,
    )


def _text(obj, value: str):
    """The value when the row's organization is covered by a grant, else the placeholder."""
    if not _visible(obj):
        return _hidden(obj.organization_id)
    return value


def _json(obj, value):
    if not _visible(obj):
        return _hidden(obj.organization_id)
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _conversation_label(conversation_id) -> str:
    return f"Conversation {conversation_id}"


class ContentPrivacyAdmin(admin.ModelAdmin):
    """Annotates every row with whether the request's staff user may read its content."""

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**{VISIBLE: content_visible_expression(user=request.user)})

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Persona)
class PersonaAdmin(ContentPrivacyAdmin):
    list_display = ["name", "organization", "updated_at"]
    list_filter = ["organization"]
    search_fields = ["name", "organization__name"]
    fields = ["id", "organization", "name", "shown_system_prompt", "created_at", "updated_at"]
    readonly_fields = fields

    @admin.display(description="system prompt")
    def shown_system_prompt(self, obj: Persona):
        return _text(obj, obj.system_prompt)


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = [
        "position",
        "role",
        "status",
        "shown_content",
        "model",
        "input_tokens",
        "output_tokens",
        "cost",
        "superseded",
    ]
    readonly_fields = fields
    ordering = ["position"]
    show_change_link = True
    can_delete = False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**{VISIBLE: content_visible_expression(user=request.user)})

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="content")
    def shown_content(self, obj: Message):
        return _text(obj, obj.content)


class ContentAccessForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.all())
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 70}),
        max_length=REASON_MAX_CHARS,
        help_text=f"Why you must read this organization's conversations (support ticket, abuse report …); "
        f"at least {REASON_MIN_CHARS} characters. The organization's owners see it in their audit log.",
    )
    minutes = forms.IntegerField(
        min_value=MIN_MINUTES,
        max_value=MAX_MINUTES,
        help_text=f"How long access lasts, {MIN_MINUTES} to {MAX_MINUTES} minutes.",
    )

    def __init__(self, *args, admin_site, **kwargs):
        super().__init__(*args, **kwargs)
        relation = Conversation._meta.get_field("organization").remote_field
        self.fields["organization"].widget = ForeignKeyRawIdWidget(relation, admin_site)
        self.fields["organization"].help_text = "The organization's id (the magnifier lists them)."


@admin.register(Conversation)
class ConversationAdmin(ContentPrivacyAdmin):
    list_display = ["label", "organization", "owner", "model", "archived", "message_count", "updated_at"]
    list_filter = ["archived", "model"]
    # Never content (titles are written from it): ids, the organization and the owner only.
    search_fields = ["id", "organization__name", "owner__email"]
    fields = [
        "id",
        "organization",
        "owner",
        "persona",
        "model",
        "archived",
        "shown_title",
        "shown_system_prompt",
        "shown_summary",
        "summary_through",
        "summary_token_count",
        "message_count",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields
    inlines = [MessageInline]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="conversation")
    def label(self, obj: Conversation) -> str:
        if _visible(obj) and obj.title:
            return obj.title
        return _conversation_label(obj.id)

    @admin.display(description="title")
    def shown_title(self, obj: Conversation):
        return _text(obj, obj.title)

    @admin.display(description="system prompt")
    def shown_system_prompt(self, obj: Conversation):
        return _text(obj, obj.system_prompt)

    @admin.display(description="summary")
    def shown_summary(self, obj: Conversation):
        return _text(obj, obj.summary)

    # The page title, breadcrumbs and history never use str(conversation) (it is the title).

    def change_view(self, request, object_id, form_url="", extra_context=None):
        label = _conversation_label(unquote(object_id))
        context = {"subtitle": label, "conversation_label": label, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=context)

    def history_view(self, request, object_id, extra_context=None):
        label = _conversation_label(unquote(object_id))
        context = {"title": f"Change history: {label}", "conversation_label": label, **(extra_context or {})}
        return super().history_view(request, object_id, extra_context=context)

    def changelist_view(self, request, extra_context=None):
        context = {**self._grants_context(request), **(extra_context or {})}
        return super().changelist_view(request, extra_context=context)

    # --- break-glass ----------------------------------------------------------------------------

    def get_urls(self):
        urls = [
            path("access/", self.admin_site.admin_view(self.access_view), name=ACCESS_URL_NAME),
            path(
                "access/<uuid:grant_id>/revoke/",
                self.admin_site.admin_view(self.revoke_view),
                name=REVOKE_URL_NAME,
            ),
        ]
        return urls + super().get_urls()

    def _grants_context(self, request) -> dict:
        grants = content_access_grants_active(user=request.user).select_related("organization").order_by("expires_at")
        return {
            "content_access_grants": list(grants),
            "content_access_url": reverse(f"admin:{ACCESS_URL_NAME}"),
            "now": timezone.now(),
        }

    def _changelist_url(self, organization_id=None) -> str:
        url = reverse("admin:conversations_conversation_changelist")
        return f"{url}?organization__id__exact={organization_id}" if organization_id else url

    def access_view(self, request):
        """Ask for access to one organization's conversation content (staff with view permission)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = ContentAccessForm(request.POST, admin_site=self.admin_site)
            if form.is_valid():
                try:
                    grant = content_access_request(
                        staff_user=request.user,
                        organization=form.cleaned_data["organization"],
                        reason=form.cleaned_data["reason"],
                        minutes=form.cleaned_data["minutes"],
                    )
                except InvalidInput as error:
                    form.add_error(error.param if error.param in form.fields else None, error.message)
                except ParleyError as error:
                    raise PermissionDenied(error.message) from None
                else:
                    messages.success(
                        request,
                        f"You may read the conversations of {grant.organization.name} until "
                        f"{timezone.localtime(grant.expires_at):%Y-%m-%d %H:%M %Z}. "
                        "The request is recorded in its audit log.",
                    )
                    return HttpResponseRedirect(self._changelist_url(grant.organization_id))
        else:
            initial = {"minutes": content_access_default_minutes()}
            if request.GET.get("organization"):
                initial["organization"] = request.GET["organization"]
            form = ContentAccessForm(initial=initial, admin_site=self.admin_site)
        context = {
            **self.admin_site.each_context(request),
            **self._grants_context(request),
            "title": "Request access to conversation content",
            "subtitle": None,
            "opts": self.opts,
            "form": form,
            "media": self.media + form.media,
            "default_minutes": content_access_default_minutes(),
        }
        return TemplateResponse(request, "admin/conversations/conversation/access.html", context)

    def revoke_view(self, request, grant_id):
        """End one of your own grants now (POST)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            grant = content_access_revoke(staff_user=request.user, grant_id=grant_id)
        except NotFound:
            raise Http404("No such access grant.") from None
        except ParleyError as error:
            raise PermissionDenied(error.message) from None
        messages.success(request, f"Access to the conversations of {grant.organization.name} ended.")
        return HttpResponseRedirect(self._changelist_url())


@admin.register(Message)
class MessageAdmin(ContentPrivacyAdmin):
    """View only: a message is the record of what a member wrote and a model answered (and of what was
    billed). Its content and tool calls show only under a grant for its organization."""

    list_display = ["id", "conversation_link", "role", "status", "model", "output_tokens", "cost", "created_at"]
    list_filter = ["status", "role", "model"]
    # Never content: ids only.
    search_fields = ["id", "conversation__id"]

    _SHOWN = {"content": "shown_content", "tool_events": "shown_tool_events", "conversation": "conversation_link"}

    def get_fields(self, request, obj=None) -> list[str]:
        return [self._SHOWN.get(field.name, field.name) for field in self.model._meta.fields]

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        return self.get_fields(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="conversation")
    def conversation_link(self, obj: Message):
        url = reverse("admin:conversations_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation_id)

    @admin.display(description="content")
    def shown_content(self, obj: Message):
        return _text(obj, obj.content)

    @admin.display(description="tool calls")
    def shown_tool_events(self, obj: Message):
        return _json(obj, obj.tool_events)
