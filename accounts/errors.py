"""Errors of the accounts app. The base, `ParleyError`, lives in config/errors.py (re-exported here);
its table says how each code is answered on the REST API, `/v1/` and the websocket."""

from __future__ import annotations

from config.errors import ParleyError

__all__ = ["InvalidInput", "NotFound", "OrganizationSuspended", "ParleyError", "PermissionDenied", "Unauthenticated"]


class NotFound(ParleyError):
    """Not found."""

    code = "not_found"


class PermissionDenied(ParleyError):
    """Your role in this organization may not do that."""

    code = "permission_denied"


class InvalidInput(ParleyError):
    """The request is not valid."""

    code = "invalid_input"


class Unauthenticated(ParleyError):
    """Authentication is required."""

    code = "unauthenticated"


class OrganizationSuspended(PermissionDenied):
    """This organization is suspended: its API keys, turns and websockets are refused. Contact support."""

    code = "organization_suspended"

    @classmethod
    def of(cls, organization) -> OrganizationSuspended:
        return cls(f"The organization “{organization.name}” is suspended: its API keys, chats and websockets are refused. Contact support.")
