"""The REST API under /api/v1/: each app's `api.py` views, wired here."""

from django.urls import path

from accounts import api as accounts_api
from billing import api as billing_api
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
    path("usage/", billing_api.UsageView.as_view(), name="api-usage"),
    path("usage/ledger/", billing_api.LedgerView.as_view(), name="api-usage-ledger"),
    path("organization/", accounts_api.OrganizationView.as_view(), name="api-organization"),
    path("organization/members/", accounts_api.MemberListView.as_view(), name="api-members"),
    path("organization/members/<uuid:membership_id>/", accounts_api.MemberDetailView.as_view(), name="api-member"),
    path("organization/invitations/", accounts_api.InvitationListView.as_view(), name="api-invitations"),
    path(
        "organization/invitations/<uuid:invitation_id>/",
        accounts_api.InvitationDetailView.as_view(),
        name="api-invitation",
    ),
    path("api-keys/", accounts_api.ApiKeyListView.as_view(), name="api-keys"),
    path("api-keys/<uuid:key_id>/", accounts_api.ApiKeyDetailView.as_view(), name="api-key"),
]
