"""Shapes of the accounts REST API, and the error envelope every endpoint documents."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from accounts.models import ApiKey, Invitation, Membership, Organization, Role

# --- fields of request bodies: JSON types as the schema declares them (DRF's own coerce: 5 → "5",
# "yes" → true, 7 → a UUID), so a field of the wrong type is a 400 on every endpoint ---------------


class StrictCharField(serializers.CharField):
    """A JSON string, nothing else (DRF's CharField also takes numbers)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictEmailField(serializers.EmailField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false (DRF's BooleanField also takes "yes", "0", 1 …)."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictUUIDField(serializers.UUIDField):
    """A UUID as a JSON string (DRF's UUIDField also takes an integer)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of the choices, as a JSON string."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable: not_found, invalid_input, rate_limited, … (docs/errors.md)")
    message = serializers.CharField(help_text="For people.")
    retry_after = serializers.IntegerField(allow_null=True, help_text="Seconds to wait before retrying, or null.")
    fields = serializers.DictField(required=False, help_text="Per-field problems of a body that does not match its schema.")
    param = serializers.CharField(required=False, help_text="The parameter concerned, when one is.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


_ERROR_TEXT = {
    400: "The request does not match its schema (`invalid_input`, with `fields`).",
    401: "No valid session or API key (`unauthenticated`).",
    403: "Your role may not do that (`permission_denied`), or your plan does not include it.",
    404: "Not found, or another organization's (`not_found`).",
    409: "An answer is already streaming in this conversation (`busy`).",
    413: "The message is longer than your plan allows (`message_too_long`), or the body is larger than the "
    "limit (`payload_too_large`).",
    422: "Well-formed, but refused (`invalid_input`).",
    429: "Rate limited (`rate_limited`) or the budget is used up (`budget_exceeded`); see Retry-After.",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """Documented error responses for extend_schema(responses=…); 400, 401 and 404 are always possible."""
    wanted = sorted({400, 401, 404, *statuses})
    return {status: OpenApiResponse(ErrorSerializer, description=_ERROR_TEXT.get(status, "")) for status in wanted}


class TierSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    monthly_budget_usd = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=True)
    requests_per_minute = serializers.IntegerField()
    tokens_per_minute = serializers.IntegerField()
    allowed_models = serializers.ListField(child=serializers.CharField())
    max_message_chars = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()
    features = serializers.ListField(child=serializers.CharField())


class OrganizationSerializer(serializers.ModelSerializer):
    tier = TierSerializer(read_only=True)
    role = serializers.SerializerMethodField(help_text="The caller's role here.")

    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "is_personal", "tier", "role", "created_at"]
        read_only_fields = fields

    def get_role(self, organization: Organization) -> str:
        return self.context["membership"].role


class OrganizationUpdateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=150)


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    name = serializers.CharField(source="user.name", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "name", "role", "created_at"]
        read_only_fields = fields


class MemberUpdateSerializer(serializers.Serializer):
    role = StrictChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "invited_by", "created_at", "expires_at", "accepted_at"]
        read_only_fields = fields


class InvitationCreateSerializer(serializers.Serializer):
    email = StrictEmailField(max_length=254)
    role = StrictChoiceField(choices=Role.choices, default=Role.MEMBER)


class ApiKeySerializer(serializers.ModelSerializer):
    owner = serializers.EmailField(source="user.email", read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "owner", "created_at", "expires_at", "revoked_at", "last_used_at", "is_active"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields
