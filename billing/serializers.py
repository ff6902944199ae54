"""Shapes of the usage REST API."""

from __future__ import annotations

from rest_framework import serializers

MONEY = {"max_digits": 24, "decimal_places": 12, "coerce_to_string": True}


class BudgetSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["organization", "member"])
    label = serializers.CharField()
    limit = serializers.DecimalField(**MONEY)
    spent = serializers.DecimalField(**MONEY)
    reserved = serializers.DecimalField(**MONEY, help_text="Held by answers being generated now.")
    remaining = serializers.DecimalField(**MONEY)
    percent = serializers.IntegerField()
    level = serializers.ChoiceField(choices=["ok", "warning", "danger", "exceeded"])
    resets_at = serializers.DateTimeField()


class ModelSpendSerializer(serializers.Serializer):
    model = serializers.CharField()
    cost = serializers.DecimalField(**MONEY)
    calls = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    period_start = serializers.DateField()
    period_end = serializers.DateTimeField()
    scope = serializers.ChoiceField(choices=["organization", "member"], help_text="Owners and admins see the organization's spend; members their own.")
    spent = serializers.DecimalField(**MONEY)
    calls = serializers.IntegerField()
    by_model = ModelSpendSerializer(many=True)
    budgets = BudgetSerializer(many=True)


class LedgerEntrySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    request_id = serializers.CharField()
    model = serializers.CharField()
    provider = serializers.CharField()
    user_email = serializers.CharField()
    api_key = serializers.UUIDField(source="api_key_id", allow_null=True)
    conversation = serializers.UUIDField(source="conversation_id", allow_null=True)
    message = serializers.UUIDField(source="message_id", allow_null=True)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(**MONEY)
    estimated = serializers.BooleanField()
    kind = serializers.CharField(help_text="usage, or credit / refund (granted by staff, a negative cost).")
    note = serializers.CharField(help_text="A credit's or refund's reason.")


class LedgerPageSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField(help_text="Exclusive.")
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    next_offset = serializers.IntegerField(allow_null=True)
    results = LedgerEntrySerializer(many=True)


class LedgerQuerySerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First day (UTC), default: the period's first day.")
    end = serializers.DateField(
        required=False, help_text="Day after the last (UTC), default: tomorrow. After `start`, at most 366 days later."
    )
    offset = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000, default=0)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)

    def to_internal_value(self, data):
        # A parameter sent empty (`?start=`) is not left out: DRF would read it as absent.
        empty = {name: ["This parameter may not be empty."] for name in self.fields if data.get(name, None) == ""}
        if empty:
            raise serializers.ValidationError(empty)
        return super().to_internal_value(data)

    def validate(self, attrs):
        start, end = attrs.get("start"), attrs.get("end")
        if start and end and end <= start:
            raise serializers.ValidationError({"end": "`end` must be after `start`."})
        if start and end and (end - start).days > 366:
            raise serializers.ValidationError({"end": "At most 366 days at once."})
        return attrs
