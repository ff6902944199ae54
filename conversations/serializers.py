"""Shapes of the conversations REST API (no logic: the services decide)."""

from __future__ import annotations

from rest_framework import serializers

from accounts.serializers import StrictBooleanField, StrictCharField, StrictUUIDField
from conversations.models import Conversation, Message

MAX_CONTENT_CHARS = 200_000  # a hard cap on the body; the tier's own limit is checked by billing


class ConversationSerializer(serializers.ModelSerializer):
    persona = serializers.UUIDField(source="persona_id", allow_null=True, read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "title", "model", "archived", "persona", "message_count", "created_at", "updated_at"]
        read_only_fields = fields


class ConversationCreateSerializer(serializers.Serializer):
    title = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    model = StrictCharField(max_length=100, required=False, allow_null=True, default=None)
    persona = StrictUUIDField(required=False, allow_null=True, default=None)


class ConversationUpdateSerializer(serializers.Serializer):
    title = StrictCharField(max_length=200, required=False, allow_blank=True)
    archived = StrictBooleanField(required=False)
    model = StrictCharField(max_length=100, required=False)


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ToolEventSerializer(serializers.Serializer):
    call = serializers.DictField(help_text="{id, name, arguments}")
    result = serializers.JSONField(required=False)
    is_error = serializers.BooleanField(required=False)


class MessageSerializer(serializers.ModelSerializer):
    conversation = serializers.UUIDField(source="conversation_id", read_only=True)
    cost = serializers.DecimalField(max_digits=24, decimal_places=8, read_only=True, coerce_to_string=True)
    error = serializers.SerializerMethodField()
    tool_events = ToolEventSerializer(many=True, read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "position",
            "role",
            "content",
            "status",
            "model",
            "input_tokens",
            "output_tokens",
            "cost",
            "error",
            "client_id",
            "tool_events",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_error(self, message: Message) -> dict | None:
        if not message.error_code:
            return None
        return {"code": message.error_code, "message": message.error_message}

    get_error.__annotations__["return"] = ErrorDetailSerializer(allow_null=True)


class MessageSendSerializer(serializers.Serializer):
    content = StrictCharField(max_length=MAX_CONTENT_CHARS, trim_whitespace=False)
    model = StrictCharField(max_length=100, required=False, allow_null=True, default=None)
    client_id = StrictUUIDField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Makes the send idempotent: sending the same client_id again answers with what exists.",
    )
    stream = StrictBooleanField(
        required=False, default=False, help_text="Answer with Server-Sent Events (the websocket's frames)."
    )


class RegenerateSerializer(serializers.Serializer):
    model = StrictCharField(max_length=100, required=False, allow_null=True, default=None)
    client_id = StrictUUIDField(required=False, allow_null=True, default=None)
    stream = StrictBooleanField(required=False, default=False)


class TurnSerializer(serializers.Serializer):
    """The result of a send or a regeneration (the assistant message is finished unless it timed out)."""

    conversation = ConversationSerializer()
    user_message = MessageSerializer(allow_null=True)
    assistant_message = MessageSerializer()
    created = serializers.BooleanField(help_text="False when this client_id was seen before.")


class ModelPriceSerializer(serializers.Serializer):
    input_per_million = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)
    output_per_million = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)
    cached_input_per_million = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)
    currency = serializers.CharField()


class ModelSerializer(serializers.Serializer):
    alias = serializers.CharField()
    display_name = serializers.CharField()
    provider = serializers.CharField()
    context_window = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()
    supports_tools = serializers.BooleanField()
    price = ModelPriceSerializer()


SSE_EVENT_TYPES = [
    "conversation.created",
    "message.created",
    "generation.started",
    "delta",
    "message.snapshot",
    "tool.call",
    "tool.result",
    "generation.finished",
]


class SSEEventSerializer(serializers.Serializer):
    """One Server-Sent Event of an answer: the websocket frame of that type, as JSON in `data`."""

    event = serializers.ChoiceField(choices=SSE_EVENT_TYPES)
    data = serializers.CharField(help_text="The frame as JSON (its `type` is the event name).")
