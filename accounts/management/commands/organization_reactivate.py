"""`manage.py organization_reactivate SLUG`: lift an organization's suspension (audited, as a system actor)."""

from django.core.management.base import BaseCommand, CommandError

from accounts.audit import audit_actor
from accounts.models import Organization
from accounts.oversight import organization_reactivate

ACTOR = "manage.py organization_reactivate"


class Command(BaseCommand):
    help = "Reactivate a suspended organization: its API keys, turns and websockets work again."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="The organization's slug.")

    def handle(self, *args, slug: str, **options) -> None:
        try:
            organization = Organization.objects.get(slug=slug)
        except Organization.DoesNotExist:
            raise CommandError(f"No organization has the slug {slug!r}.") from None
        with audit_actor(system=ACTOR):
            changed = organization_reactivate(organization=organization)
        if changed:
            self.stdout.write(self.style.SUCCESS(f"Reactivated {organization.name} ({organization.slug})."))
        else:
            self.stdout.write(f"{organization.name} ({organization.slug}) is not suspended; nothing changed.")
