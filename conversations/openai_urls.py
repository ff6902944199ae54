"""The OpenAI-compatible endpoint, included at /v1/ by config/urls.py."""

from django.urls import path

from conversations.openai import views

urlpatterns = [
    path("chat/completions", views.chat_completions, name="openai-chat-completions"),
    path("models", views.models, name="openai-models"),
    path("models/<path:model_id>", views.model_detail, name="openai-model"),
]
