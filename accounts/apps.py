from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import receivers
        from accounts.models import ApiKey, Membership, Organization, Tier, User
        from accounts.selectors import auth_generation_bump

        receivers.connect()  # log-in, log-out, password and MFA events into the audit trail

        # What an authenticated API key carries: any change forgets the remembered keys.
        for model in (ApiKey, Membership, Organization, Tier, User):
            for signal in (post_save, post_delete):
                signal.connect(auth_generation_bump, sender=model, dispatch_uid=f"accounts.auth_generation.{model.__name__}.{id(signal)}")
