from django.contrib import admin

from conversations.models import Conversation, Message, Persona


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "updated_at"]
    list_filter = ["organization"]
    search_fields = ["name", "organization__name"]
    raw_id_fields = ["organization"]


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["position", "role", "status", "content", "model", "input_tokens", "output_tokens", "cost", "superseded"]
    readonly_fields = fields
    ordering = ["position"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "organization", "owner", "model", "archived", "message_count", "updated_at"]
    list_filter = ["archived", "model"]
    search_fields = ["title", "organization__name", "owner__email"]
    raw_id_fields = ["organization", "owner", "persona"]
    readonly_fields = ["created_at", "message_count", "summary_through", "summary_token_count"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """View only: a message is the record of what a member wrote and a model answered (and of what was
    billed); staff read it, nobody edits it here."""

    list_display = ["id", "conversation", "role", "status", "model", "output_tokens", "cost", "created_at"]
    list_filter = ["status", "role", "model"]
    search_fields = ["id", "conversation__id", "content"]
    raw_id_fields = ["conversation", "organization", "parent"]

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
