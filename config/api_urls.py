"""The REST API under /api/v1/: each app's `api.py` views, wired here."""

from django.urls import path

from conversations import api as conversations_api

urlpatterns = [
    path("conversations/", conversations_api.ConversationListView.as_view(), name="api-conversations"),
    path("conversations/send/", conversations_api.ConversationSendView.as_view(), name="api-conversation-send"),
    path(
        "conversations/<uuid:conversation_id>/",
        conversations_api.ConversationDetailView.as_view(),
        name="api-conversation",
    ),
    path(
        "conversations/<uuid:conversation_id>/messages/",
        conversations_api.MessageListView.as_view(),
        name="api-conversation-messages",
    ),
    path(
        "conversations/<uuid:conversation_id>/regenerate/",
        conversations_api.RegenerateView.as_view(),
        name="api-conversation-regenerate",
    ),
    path("messages/<uuid:message_id>/", conversations_api.MessageDetailView.as_view(), name="api-message"),
    path("messages/<uuid:message_id>/stop/", conversations_api.MessageStopView.as_view(), name="api-message-stop"),
    path("models/", conversations_api.ModelListView.as_view(), name="api-models"),
]
