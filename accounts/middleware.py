from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings

from accounts.audit import audit_bind, audit_unbind, context_from_request
from accounts.errors import NotFound
from accounts.selectors import membership_default, membership_get

SESSION_KEY = "parley_organization_id"


def resolve_membership(request):
    """The member the request acts as: the session's chosen organization, else the default one.

    A stale or foreign choice in the session falls back to the default, so a user can never act in
    an organization they do not belong to.
    """
    user = request.user
    if not user.is_authenticated:
        return None
    chosen = request.session.get(SESSION_KEY)
    if chosen:
        try:
            return membership_get(user=user, organization_id=chosen)
        except NotFound:
            request.session.pop(SESSION_KEY, None)
    return membership_default(user=user)


class CurrentOrganizationMiddleware:
    """Resolves the current membership once per request: `request.membership` (None when anonymous).

    API-key requests get theirs from DRF authentication instead (the key's organization).
    Works in both sync and async stacks, so async views (SSE, streaming) need no extra thread hop.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        request.membership = resolve_membership(request)
        request.api_key = None
        token = audit_bind(**context_from_request(request))  # who acts, for accounts.audit
        try:
            return self.get_response(request)
        finally:
            audit_unbind(token)

    async def __acall__(self, request):
        has_session = settings.SESSION_COOKIE_NAME in request.COOKIES
        if has_session:  # resolves request.user too, in the thread
            request.membership = await sync_to_async(resolve_membership)(request)
        else:  # no session, so anonymous: no thread hop (API-key and OpenAI-compatible requests)
            request.membership = None
        request.api_key = None
        token = audit_bind(**context_from_request(request, anonymous=not has_session))  # who acts, for accounts.audit
        try:
            return await self.get_response(request)
        finally:
            audit_unbind(token)
