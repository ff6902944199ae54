"""Middleware of Parley's own, both async-capable (one sync middleware makes Django run every request
through a thread of its own under ASGI, started and joined on the event loop).

- `AsyncWhiteNoiseMiddleware`: WhiteNoise, whose middleware is sync-only; requests that are not for a
  static file go straight on, and only static files are served from a thread.
- `DatabaseOutageMiddleware`: a database failure anywhere in the stack (a session, the user or the
  member read by another middleware, a view) answers 503 `service_unavailable` with `Retry-After`:
  JSON in the REST shape under /api/ and /v1/, a plain page elsewhere. Never Django's 500 page.
"""

import sys

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, JsonResponse
from whitenoise.middleware import WhiteNoiseMiddleware

from config.errors import (
    ParleyError,
    database_unavailable,
    log_database_unavailable,
    openai_error_parts,
    rest_error_parts,
    retry_after_seconds,
)


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, **kwargs):
        super().__init__(get_response, **kwargs)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        return await self.get_response(request)


# Django turns an exception into a response where it is raised, inside each middleware's wrapper
# (convert_exception_to_response), so no other middleware ever sees it. It does announce it first,
# with `got_request_exception`, while the exception is being handled (sys.exc_info() is set, also on
# the thread asgiref runs the conversion on): the receiver marks the request, the middleware answers.
_MARK = "parley_database_outage"


def _mark_outage(sender, request=None, **kwargs) -> None:
    exc = sys.exc_info()[1]
    if request is None or exc is None:
        return
    error = database_unavailable(exc)
    if error is not None:
        setattr(request, _MARK, error)
        log_database_unavailable(exc, request.path[:80])


got_request_exception.connect(_mark_outage, dispatch_uid="parley.database_outage")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parley is briefly unavailable</title></head>
<body><h1>Parley is briefly unavailable</h1>
<p>The database cannot be reached right now. Retry in a few seconds.</p></body></html>
"""


def database_outage_response(request: HttpRequest, error: ParleyError) -> HttpResponse:
    """The 503 answer to a request that met a database outage, in the shape of where it went."""
    path = request.path
    if path == "/v1" or path.startswith("/v1/"):
        status, body, headers = openai_error_parts(error)
        return JsonResponse(body, status=status, headers=headers)
    if path == "/api" or path.startswith("/api/"):
        status, body, headers = rest_error_parts(error)
        return JsonResponse(body, status=status, headers=headers)
    response = HttpResponse(_PAGE, status=503, content_type="text/html; charset=utf-8")
    seconds = retry_after_seconds(error.retry_after)
    if seconds is not None:
        response["Retry-After"] = str(seconds)
    return response


class DatabaseOutageMiddleware:
    """Place it outside every middleware that reads the database (right after SecurityMiddleware)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _answer(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        error = getattr(request, _MARK, None)
        if error is None or response.status_code < 500:
            return response
        return database_outage_response(request, error)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self._answer(request, self.get_response(request))

    async def __acall__(self, request):
        return self._answer(request, await self.get_response(request))
