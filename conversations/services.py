"""Writes of conversations other than the chat turn: conversations and personas.

The turn itself (send, edit, regenerate, stop) is conversations.turns, over conversations.engine.
"""

from __future__ import annotations

from uuid import UUID

from django.utils import timezone

from accounts.errors import InvalidInput, PermissionDenied
from accounts.models import Membership
from conversations.errors import Busy
from conversations.models import DEFAULT_MODEL, Conversation, Message, Persona, Status
from conversations.selectors import conversation_get_for_member, persona_get_for_member
from conversations.turns import model_info_for

TITLE_MAX_CHARS = 80


# --- conversations and personas ---------------------------------------------------------------


def conversation_create(
    *, membership: Membership, title: str = "", model: str | None = None, persona_id: UUID | None = None
) -> Conversation:
    persona = persona_get_for_member(membership=membership, persona_id=persona_id) if persona_id else None
    alias = model or DEFAULT_MODEL
    model_info_for(alias)
    return Conversation.objects.create(
        organization_id=membership.organization_id,
        owner_id=membership.user_id,
        title=title.strip()[:200],
        model=alias,
        persona=persona,
        system_prompt=persona.system_prompt if persona else "",
    )


_UNSET = object()


def conversation_update(
    *,
    membership: Membership,
    conversation_id: UUID,
    title=_UNSET,
    archived=_UNSET,
    model=_UNSET,
    system_prompt=_UNSET,
) -> Conversation:
    conversation = conversation_get_for_member(membership=membership, conversation_id=conversation_id)
    fields = []
    if title is not _UNSET:
        conversation.title = (title or "").strip()[:200]
        fields.append("title")
    if archived is not _UNSET:
        conversation.archived = bool(archived)
        fields.append("archived")
    if model is not _UNSET:
        model_info_for(model)
        conversation.model = model
        fields.append("model")
    if system_prompt is not _UNSET:
        conversation.system_prompt = system_prompt or ""
        fields.append("system_prompt")
    if fields:
        conversation.updated_at = timezone.now()
        conversation.save(update_fields=[*fields, "updated_at"])
    return conversation


def conversation_delete(*, membership: Membership, conversation_id: UUID) -> None:
    conversation = conversation_get_for_member(membership=membership, conversation_id=conversation_id)
    if Message.objects.filter(conversation=conversation, status=Status.STREAMING).exists():
        raise Busy("Stop the answer before deleting the conversation.")
    conversation.delete()


def _require_admin(membership: Membership) -> None:
    if not membership.is_admin:
        raise PermissionDenied("Only owners and admins manage personas.")


def persona_create(*, membership: Membership, name: str, system_prompt: str) -> Persona:
    _require_admin(membership)
    name = name.strip()
    if not name or not system_prompt.strip():
        raise InvalidInput("A persona needs a name and a system prompt.")
    if Persona.objects.for_organization(membership.organization_id).filter(name=name).exists():
        raise InvalidInput("A persona with this name already exists.")
    return Persona.objects.create(organization_id=membership.organization_id, name=name[:100], system_prompt=system_prompt)


def persona_update(*, membership: Membership, persona_id: UUID, name: str, system_prompt: str) -> Persona:
    _require_admin(membership)
    persona = persona_get_for_member(membership=membership, persona_id=persona_id)
    name = name.strip()
    if not name or not system_prompt.strip():
        raise InvalidInput("A persona needs a name and a system prompt.")
    if Persona.objects.for_organization(membership.organization_id).filter(name=name).exclude(id=persona.id).exists():
        raise InvalidInput("A persona with this name already exists.")
    persona.name, persona.system_prompt = name[:100], system_prompt
    persona.save(update_fields=["name", "system_prompt", "updated_at"])
    return persona


def persona_delete(*, membership: Membership, persona_id: UUID) -> None:
    _require_admin(membership)
    persona_get_for_member(membership=membership, persona_id=persona_id).delete()


def title_from_text(text: str) -> str:
    """A short title from the first message (the fallback when no model answers)."""
    words = " ".join(text.split())
    if len(words) <= TITLE_MAX_CHARS:
        return words
    cut = words[: TITLE_MAX_CHARS - 1].rsplit(" ", 1)[0]
    return (cut or words[: TITLE_MAX_CHARS - 1]) + "…"

