"""Websocket authentication: `scope["membership"]` (and `scope["api_key"]`) for consumers.

Programs send `Authorization: Bearer <key>` on the upgrade request; a browser cannot set that
header, so a bearer socket needs no origin check. Browsers come with the session cookie and must
send an `Origin` that matches an allowed host (cross-site websocket hijacking). When neither works,
`scope["membership"]` is None and `scope["auth_error"]` says why (`Unauthenticated`, or
`PermissionDenied` for a plan without API access, or its `OrganizationSuspended` for an organization
suspended by staff, whichever the credential): the consumer accepts the socket, sends the `error`
frame and closes it at once with 4401 or 4403 (a refused upgrade would reach real clients as a bare
HTTP 403).
"""

from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.http.request import validate_host

from accounts.errors import OrganizationSuspended, PermissionDenied, Unauthenticated
from accounts.middleware import SESSION_KEY
from accounts.selectors import api_key_authenticate, bearer_secret, membership_default, membership_get


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def origin_allowed(origin: bytes | None) -> bool:
    if not origin:
        return False
    host = urlparse(origin.decode("latin-1")).hostname or ""
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    return validate_host(host, allowed) or validate_host(f"[{host}]", allowed)


@database_sync_to_async
def _membership_for_bearer(secret: str):
    """(key, membership, None), or (None, None, the error) for a key that may not open a socket."""
    try:
        key, membership = api_key_authenticate(secret=secret)
    except (Unauthenticated, PermissionDenied) as error:
        return None, None, error
    return key, membership, None


@database_sync_to_async
def _membership_for_session(user, session):
    chosen = session.get(SESSION_KEY) if session is not None else None
    if chosen:
        try:
            return membership_get(user=user, organization_id=chosen)
        except Exception:
            pass
    return membership_default(user=user)


class MembershipMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        scope["membership"] = None
        scope["api_key"] = None
        scope["auth_error"] = None
        secret = bearer_secret(_header(scope, b"authorization"))
        if secret is not None:
            key, membership, error = await _membership_for_bearer(secret)
            scope["membership"], scope["api_key"], scope["auth_error"] = membership, key, error
        else:
            user = scope.get("user")
            if user is None or not user.is_authenticated:
                scope["auth_error"] = Unauthenticated(
                    "Sign in, or send `Authorization: Bearer <API key>` on the upgrade request."
                )
            elif not origin_allowed(_header(scope, b"origin")):
                scope["auth_error"] = Unauthenticated("A session socket needs an Origin header of an allowed host.")
            else:
                membership = await _membership_for_session(user, scope.get("session"))
                if membership is None:
                    scope["auth_error"] = PermissionDenied("You are not a member of any organization.")
                elif membership.organization.is_suspended:
                    scope["auth_error"] = OrganizationSuspended.of(membership.organization)
                else:
                    scope["membership"] = membership
        return await self.inner(scope, receive, send)


def WebsocketAuthStack(inner):  # noqa: N802 - reads like the Channels stacks it wraps
    return AuthMiddlewareStack(MembershipMiddleware(inner))
