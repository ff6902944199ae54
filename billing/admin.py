from django.contrib import admin

from billing.models import Budget, DailyUsage, LedgerEntry, PeriodSpend, Price, RateLimitPolicy, Reservation


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model", "effective_at", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "is_free", "source_date"]
    list_filter = ["is_free", "model"]
    search_fields = ["model"]
    ordering = ["model", "-effective_at"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "user_email", "model", "input_tokens", "output_tokens", "cost", "estimated"]
    list_filter = ["model", "provider", "estimated"]
    search_fields = ["request_id", "turn_request_id", "user_email", "organization__name"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]
    show_full_result_count = False


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["organization", "membership", "monthly_limit_usd", "updated_at"]
    search_fields = ["organization__name", "membership__user__email"]
    raw_id_fields = ["organization", "membership"]


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
