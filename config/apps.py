from django.contrib.admin.apps import AdminConfig


class ParleyAdminConfig(AdminConfig):
    """Django's admin with Parley's site (config.admin.ParleyAdminSite: the staff console)."""

    default_site = "config.admin.ParleyAdminSite"
