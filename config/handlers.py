"""Django's ASGI handler without the middleware, for the OpenAI-compatible endpoint (`/v1/`).

`/v1/` authenticates by API key only: no session, cookie, CSRF, message or static file is ever
involved, so the middleware has nothing to do there. It is not free, though: under ASGI each
sync-style middleware (Django's own) runs its request and response hooks on a thread, so a dozen
thread hops per request. This handler resolves the URL and calls the view directly; errors still
become responses as they do everywhere (`convert_exception_to_response`).

It also runs no sync view, so it does not give each request a thread of its own (Django starts
and joins one per request for thread-sensitive calls): the few it makes — the request signals'
receivers and closing the response — share asgiref's single sync thread.
"""

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response


class MiddlewareFreeASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)


def prefix_router(prefix: str, matched, other):
    """An ASGI app that sends HTTP requests whose path starts with `prefix` to `matched`, the rest to `other`."""

    async def app(scope, receive, send):
        target = matched if scope["path"].startswith(prefix) else other
        await target(scope, receive, send)

    return app
