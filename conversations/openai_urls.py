"""The OpenAI-compatible endpoint, included at /v1/ by config/urls.py."""

from django.urls import path

from conversations import openai_views

urlpatterns = [
    path("chat/completions", openai_views.chat_completions, name="openai-chat-completions"),
    path("models", openai_views.models, name="openai-models"),
    path("models/<path:model_id>", openai_views.model_detail, name="openai-model"),
]
