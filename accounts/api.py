"""REST API of accounts: the organization, its members and invitations, and the caller's API keys.

Also the small helpers every app's API views use to get the acting member from a DRF request
(`request.membership` is set by accounts.middleware for sessions and by ApiKeyAuthentication for keys).
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from accounts.errors import Unauthenticated
from accounts.models import ApiKey, Membership


def membership_of(request) -> Membership:
    membership = getattr(request, "membership", None)
    if membership is None:
        raise Unauthenticated("Log in, or send an API key as `Authorization: Bearer <key>`.")
    return membership


def api_key_of(request) -> ApiKey | None:
    return getattr(request, "api_key", None)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents `Authorization: Bearer <API key>` in the OpenAPI schema."""

    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A Parley API key (`pk_…`), created on the settings page or with POST /api/v1/api-keys/.",
        }
