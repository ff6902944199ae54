"""DRF authentication by `Authorization: Bearer <API key>`.

Sets `request.user` to the key's user and `request.auth` to the key; the membership the key acts
as is at `request.membership` (also set for session users by the middleware).
"""

import structlog
from rest_framework import authentication, exceptions

from accounts.audit import audit_bind
from accounts.errors import Unauthenticated
from accounts.selectors import api_key_authenticate, bearer_secret


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        secret = bearer_secret(request.META.get("HTTP_AUTHORIZATION"))
        if secret is None:
            return None
        try:
            key, membership = api_key_authenticate(secret=secret)
        except Unauthenticated as error:
            raise exceptions.AuthenticationFailed(error.message) from None
        request._request.membership = membership
        request._request.api_key = key
        structlog.contextvars.bind_contextvars(organization_id=str(membership.organization_id))  # the logs' context
        audit_bind(user=key.user, api_key=key)  # undone with the request's context (accounts.middleware)
        return key.user, key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="parley"'
