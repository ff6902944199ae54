from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class LlmConfig(AppConfig):
    name = "llm"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from llm.models import ModelConfig
        from llm.registry import rows_invalidate

        # an edited model (the admin) must not wait for the in-memory copy of the rows to expire
        post_save.connect(rows_invalidate, sender=ModelConfig, dispatch_uid="llm-registry-save")
        post_delete.connect(rows_invalidate, sender=ModelConfig, dispatch_uid="llm-registry-delete")
