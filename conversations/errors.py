"""Errors of the conversations app (codes from shared/PROTOCOL.md)."""

from accounts.errors import InvalidInput, NotFound
from config.errors import ParleyError


class ConversationNotFound(NotFound):
    """Conversation not found."""


class MessageNotFound(NotFound):
    """Message not found."""


class PersonaNotFound(NotFound):
    """Persona not found."""


class Busy(ParleyError):
    """An answer is already streaming in this conversation."""

    code = "busy"


class FrameTooLarge(ParleyError):
    """The frame is larger than the limit."""

    code = "frame_too_large"


class InvalidTurn(InvalidInput):
    """The request is not valid."""
