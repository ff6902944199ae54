from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import conversations.tasks  # noqa: F401  (registers the tasks conversations.followups queues by name, in every process)
