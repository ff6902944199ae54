"""`manage.py organization_suspend SLUG [--reason TEXT]`: suspend an organization (audited, as a system actor)."""

from django.core.management.base import BaseCommand, CommandError

from accounts.audit import audit_actor
from accounts.errors import InvalidInput
from accounts.models import Organization
from accounts.oversight import organization_suspend

ACTOR = "manage.py organization_suspend"


class Command(BaseCommand):
    help = (
        "Suspend an organization: its members can still log in, but its API keys, turns and websockets "
        "are refused with `organization_suspended` until it is reactivated (organization_reactivate)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="The organization's slug.")
        parser.add_argument("--reason", default="", help="Why (shown to the organization's members).")

    def handle(self, *args, slug: str, reason: str, **options) -> None:
        try:
            organization = Organization.objects.get(slug=slug)
        except Organization.DoesNotExist:
            raise CommandError(f"No organization has the slug {slug!r}.") from None
        try:
            with audit_actor(system=ACTOR):
                changed = organization_suspend(organization=organization, reason=reason)
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        if changed:
            why = f": {organization.suspended_reason}" if organization.suspended_reason else ""
            self.stdout.write(self.style.SUCCESS(f"Suspended {organization.name} ({organization.slug}){why}."))
        else:
            self.stdout.write(
                f"{organization.name} ({organization.slug}) was already suspended since "
                f"{organization.suspended_at:%Y-%m-%d %H:%M} UTC; nothing changed."
            )
