"""Conversations, their messages, and the system-prompt presets (personas) of an organization.

Messages are ordered by `position` (1, 2, 3 … per conversation, assigned under the conversation's
row lock), never by timestamps, which can tie. Edits and regenerations keep the old message and
mark it `superseded`; the context and the chat page use the messages that are not superseded.
"""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

DEFAULT_MODEL = "demo"


class PersonaQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)


class Persona(models.Model):
    """A system-prompt preset the organization's admins manage; picked when a conversation starts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="personas")
    name = models.CharField(max_length=100)
    system_prompt = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PersonaQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="unique_persona_name")]

    def __str__(self) -> str:
        return self.name


class ConversationQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)

    def for_member(self, membership):
        return self.filter(organization_id=membership.organization_id, owner_id=membership.user_id)


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="conversations")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=100, default=DEFAULT_MODEL, help_text="Model alias used for new answers.")
    system_prompt = models.TextField(blank=True)
    persona = models.ForeignKey(Persona, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # How many messages were ever added (the last assigned `Message.position`).
    message_count = models.PositiveIntegerField(default=0)
    # Older turns summarized into one text, sent in their place; covers positions 1..summary_through.
    summary = models.TextField(blank=True)
    summary_through = models.PositiveIntegerField(default=0)
    summary_token_count = models.PositiveIntegerField(default=0)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["organization", "owner", "archived", "-updated_at"], name="conv_list_idx"),
        ]

    def __str__(self) -> str:
        return f"Conversation {self.id}"  # never the title: staff lists and logs must not show content


class Role(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    STREAMING = "streaming", "Streaming"
    COMPLETE = "complete", "Complete"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    INTERRUPTED = "interrupted", "Interrupted"


TERMINAL_STATUSES = (Status.COMPLETE, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)


class MessageQuerySet(models.QuerySet):
    def for_organization(self, organization):
        return self.filter(organization=organization)

    def visible(self):
        return self.filter(superseded=False)


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # Denormalized from the conversation so every read can be scoped by tenant without a join.
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=100, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    # Tokens of `content`, counted once when the content is final; the context fitter uses it.
    token_count = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    # Makes a send idempotent: the same client_id never creates a second message (unique per
    # organization and role, so a resend with `conversation: null` is found too).
    client_id = models.UUIDField(null=True, blank=True)
    # The message this one replaces (an edit of a user message, a regeneration of an answer).
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    superseded = models.BooleanField(default=False)
    # Tool calls and results of this answer, in order: [{"call": {...}, "result": ...}, …].
    tool_events = models.JSONField(default=list, blank=True)
    # The seq of the last delta whose text is included in `content`.
    last_seq = models.PositiveIntegerField(default=0)
    reservation_id = models.UUIDField(null=True, blank=True, help_text="Billing reservation of this answer.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="unique_message_position"),
            models.UniqueConstraint(
                fields=["organization", "role", "client_id"],
                condition=Q(client_id__isnull=False),
                name="unique_message_client_id",
            ),
        ]
        indexes = [
            # History: the recent visible messages of a conversation, newest first.
            models.Index(fields=["conversation", "superseded", "-position"], name="msg_history_idx"),
            # Start-up: find answers left streaming by a dead process.
            models.Index(fields=["status"], name="msg_streaming_idx", condition=Q(status="streaming")),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.position} in {self.conversation_id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES
