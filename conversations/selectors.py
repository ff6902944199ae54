"""Tenant-scoped reads of conversations. Missing and foreign ids raise the same NotFound.

A conversation belongs to the member who started it: other members of the organization, and
every other organization, get `not_found`.
"""

from uuid import UUID

from accounts.models import Membership
from conversations.errors import ConversationNotFound, MessageNotFound, PersonaNotFound
from conversations.models import Conversation, Message, Persona, Role, Status


def _uuid(value) -> UUID | None:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def conversation_get_for_member(*, membership: Membership, conversation_id: UUID | str) -> Conversation:
    conversation_id = _uuid(conversation_id)
    if conversation_id is None:
        raise ConversationNotFound()
    try:
        return Conversation.objects.for_member(membership).get(id=conversation_id)
    except Conversation.DoesNotExist:
        raise ConversationNotFound() from None


def conversations_for_member(
    *, membership: Membership, archived: bool | None = False, search: str = "", limit: int | None = None
) -> list[Conversation]:
    """The member's conversations, most recently updated first."""
    qs = Conversation.objects.for_member(membership)
    if archived is not None:
        qs = qs.filter(archived=archived)
    if search:
        qs = qs.filter(title__icontains=search)
    qs = qs.order_by("-updated_at")
    if limit is not None:
        qs = qs[:limit]
    return list(qs)


def messages_for_conversation(
    *, conversation: Conversation, include_superseded: bool = False, last: int | None = None
) -> list[Message]:
    """The conversation's messages in order; with `last`, only the most recent ones."""
    qs = Message.objects.filter(conversation=conversation, organization_id=conversation.organization_id)
    if not include_superseded:
        qs = qs.filter(superseded=False)
    if last is not None:
        return list(reversed(qs.order_by("-position")[:last]))
    return list(qs.order_by("position"))


def message_get_for_member(*, membership: Membership, message_id: UUID | str) -> Message:
    message_id = _uuid(message_id)
    if message_id is None:
        raise MessageNotFound()
    try:
        return Message.objects.select_related("conversation").get(
            id=message_id,
            organization_id=membership.organization_id,
            conversation__owner_id=membership.user_id,
        )
    except Message.DoesNotExist:
        raise MessageNotFound() from None


def message_streaming_in(*, conversation: Conversation) -> Message | None:
    """The answer streaming in this conversation, if any (at most one at a time)."""
    return (
        Message.objects.filter(conversation=conversation, role=Role.ASSISTANT, status=Status.STREAMING)
        .order_by("-position")
        .first()
    )


def personas_for_organization(*, organization) -> list[Persona]:
    return list(Persona.objects.for_organization(organization).order_by("name"))


def persona_get_for_member(*, membership: Membership, persona_id: UUID | str) -> Persona:
    persona_id = _uuid(persona_id)
    if persona_id is None:
        raise PersonaNotFound()
    try:
        return Persona.objects.for_organization(membership.organization_id).get(id=persona_id)
    except Persona.DoesNotExist:
        raise PersonaNotFound() from None


def conversations_page_for_member(*, membership: Membership, archived: bool = False, search: str = ""):
    """The chat list's queryset (paginated by the page): the member's conversations, newest first.

    `search` matches the title or the text of any visible message. `first_message` (the start of
    the first user message) stands in for a missing title.
    """
    from django.db.models import Exists, OuterRef, Q, Subquery
    from django.db.models.functions import Substr

    first = Message.objects.filter(conversation=OuterRef("pk"), role=Role.USER, superseded=False).order_by("position")
    qs = (
        Conversation.objects.for_member(membership)
        .filter(archived=archived)
        .annotate(first_message=Substr(Subquery(first.values("content")[:1]), 1, 160))
    )
    search = search.strip()
    if search:
        in_messages = Message.objects.filter(
            conversation=OuterRef("pk"), organization_id=membership.organization_id, superseded=False,
            content__icontains=search,
        )  # fmt: skip
        qs = qs.filter(Q(title__icontains=search) | Exists(in_messages))
    return qs.order_by("-updated_at", "-id")
