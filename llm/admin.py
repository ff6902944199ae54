from django.contrib import admin

from llm.models import ModelConfig, ProviderCall
from llm.registry import provider_configured


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("alias", "display_name", "provider", "vendor_model", "context_window", "max_output_tokens",
                    "supports_tools", "enabled", "configured", "position")
    list_filter = ("provider", "enabled", "supports_tools")
    list_editable = ("enabled", "position")
    search_fields = ("alias", "vendor_model", "display_name")
    fieldsets = (
        (None, {"fields": ("alias", "display_name", "provider", "vendor_model", "enabled", "position")}),
        ("Limits", {"fields": ("context_window", "max_output_tokens", "supports_tools", "fallbacks")}),
        ("OpenAI-compatible server", {"fields": ("base_url", "api_key_env"),
                                      "description": "Only for provider “OpenAI-compatible server”: its base URL "
                                                     "and the NAME of the environment variable holding its key."}),
    )

    @admin.display(boolean=True, description="key configured")
    def configured(self, obj: ModelConfig) -> bool:
        return provider_configured(obj.provider, base_url=obj.base_url, api_key_env=obj.api_key_env)


@admin.register(ProviderCall)
class ProviderCallAdmin(admin.ModelAdmin):
    """Read-only: the log is evidence of what happened."""

    list_display = ("started_at", "model", "provider", "attempt", "round", "status", "error_class",
                    "time_to_first_token_ms", "duration_ms", "input_tokens", "output_tokens", "cached_input_tokens",
                    "organization_id", "request_id")
    list_filter = ("status", "provider", "model", "error_class", ("started_at", admin.DateFieldListFilter),
                   "organization_id")
    search_fields = ("request_id", "call_id", "=organization_id", "=user_id", "prompt_sha256")
    date_hierarchy = "started_at"
    list_select_related = False
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
