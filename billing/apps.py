from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import billing.tasks  # noqa: F401  (registers the tasks billing.alerts enqueues by name, in every process)
        from billing.models import Price
        from billing.selectors import prices_forget

        post_save.connect(prices_forget, sender=Price, dispatch_uid="billing.prices_forget.save")
        post_delete.connect(prices_forget, sender=Price, dispatch_uid="billing.prices_forget.delete")
