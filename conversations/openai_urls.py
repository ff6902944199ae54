"""The OpenAI-compatible endpoint, included at /v1/ by config/urls.py."""

from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path

from config.errors import ParleyError, openai_error_parts
from conversations.openai import views


async def unknown_path(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Every other path under /v1/: OpenAI's JSON 404 (an async view: /v1/ runs no sync view)."""
    error = ParleyError(f"Invalid URL ({request.method} {request.path})", code="not_found")
    status, body, headers = openai_error_parts(error)
    return JsonResponse(body, status=status, headers=headers)


urlpatterns = [
    path("chat/completions", views.chat_completions, name="openai-chat-completions"),
    path("models", views.models, name="openai-models"),
    path("models/<path:model_id>", views.model_detail, name="openai-model"),
    # Last: whatever the routes above do not match.
    re_path(r"", unknown_path, name="openai-unknown"),
]
