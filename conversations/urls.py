from django.urls import path

from conversations import views

app_name = "conversations"

urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("new/", views.chat_new, name="new"),
    path("start/", views.chat_start, name="start"),
    path("personas/", views.persona_list, name="personas"),
    path("personas/<uuid:persona_id>/", views.persona_edit, name="persona_edit"),
    path("personas/<uuid:persona_id>/delete/", views.persona_delete, name="persona_delete"),
    path("<uuid:conversation_id>/", views.chat_detail, name="detail"),
    path("<uuid:conversation_id>/archive/", views.conversation_archive, name="archive"),
    path("<uuid:conversation_id>/delete/", views.conversation_delete, name="delete"),
    path("<uuid:conversation_id>/rename/", views.conversation_rename, name="rename"),
    path("<uuid:conversation_id>/messages/<uuid:message_id>/", views.message_detail, name="message"),
]
