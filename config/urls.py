from django.contrib import admin
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, include, path, re_path, resolve
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health
from config.errors import SCHEMA_ERROR_STATUS, ParleyError, openai_error_parts
from config.exceptions import error_response, payload_too_large


@csrf_exempt  # a 404 whatever the method; the API's own views check CSRF for sessions (DRF)
def api_not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """Every path under /api/ that no route matches (a malformed id included): a JSON 404."""
    message = f"No such path: {request.path}"
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            message += f" (did you mean {request.path}/ ?)"
    return error_response(ParleyError(message, code="not_found"))


async def openai_not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """Every path under /v1/ that no route matches: OpenAI's JSON 404 (async: /v1/ runs no sync view,
    see config/handlers.py)."""
    error = ParleyError(f"Invalid URL ({request.method} {request.path})", code="not_found")
    status, body, headers = openai_error_parts(error)
    return JsonResponse(body, status=status, headers=headers)


urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("", include("accounts.urls")),
    path("chat/", include("conversations.urls")),
    path("usage/", include("billing.urls")),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^api(?:/|$)", api_not_found),
    path("v1/", include("conversations.openai_urls")),
    re_path(r"^v1(?:/|$)", csrf_exempt(openai_not_found)),
]


# --- Django's own error answers: JSON under /api/ and /v1/, the HTML pages elsewhere -----------


def _api_of(request: HttpRequest) -> str | None:
    path_ = request.path
    if path_ == "/api" or path_.startswith("/api/"):
        return "rest"
    if path_ == "/v1" or path_.startswith("/v1/"):
        return "openai"
    return None


def _json_error(api: str, error: ParleyError, status: int | None = None) -> HttpResponse:
    if api == "openai":
        code, body, headers = openai_error_parts(error)
        return JsonResponse(body, status=status or code, headers=headers)
    return error_response(error, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    api = _api_of(request)
    if api is None:
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return _json_error(api, payload_too_large())
    return _json_error(api, ParleyError("Bad request.", code="invalid_input"), status=SCHEMA_ERROR_STATUS)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    api = _api_of(request)
    if api is None:
        return defaults.permission_denied(request, exception)
    return _json_error(api, ParleyError("You may not do that.", code="permission_denied"))


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    api = _api_of(request)
    if api is None:
        return defaults.page_not_found(request, exception)
    return _json_error(api, ParleyError(f"No such path: {request.path}", code="not_found"))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    api = _api_of(request)
    if api is None:
        return csrf.csrf_failure(request, reason)
    return _json_error(api, ParleyError(f"CSRF check failed: {reason}", code="permission_denied"))


def server_error(request: HttpRequest) -> HttpResponse:
    api = _api_of(request)
    if api is None:
        return defaults.server_error(request)
    return _json_error(api, ParleyError("Internal error.", code="internal_error"))


handler400 = bad_request
handler403 = permission_denied
handler404 = page_not_found
handler500 = server_error
