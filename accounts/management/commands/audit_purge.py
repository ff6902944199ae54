"""`manage.py audit_purge [--days N]`: delete audit events older than N days (the retention purge).

N defaults to settings.AUDIT_RETENTION_DAYS; with neither, the command refuses (events are kept
forever). The purge records an `audit.purge` event (accounts.audit_integrity.audit_purge)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.audit_integrity import audit_purge
from accounts.errors import InvalidInput


class Command(BaseCommand):
    help = "Delete audit events older than N days (default AUDIT_RETENTION_DAYS), oldest first per chain."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, help="Retention in days (default: AUDIT_RETENTION_DAYS).")

    def handle(self, *args, **options):
        days = options.get("days")
        if days is None:
            days = getattr(settings, "AUDIT_RETENTION_DAYS", None)
        if days is None:
            raise CommandError("No retention: pass --days N or set AUDIT_RETENTION_DAYS (events are kept forever).")
        try:
            result = audit_purge(older_than_days=int(days))
        except (InvalidInput, ValueError) as error:
            raise CommandError(str(error)) from None
        per_chain = ", ".join(f"{chain}: {count}" for chain, count in sorted(result.deleted.items())) or "none"
        self.stdout.write(
            f"Purged {result.total} audit events older than {result.cutoff.isoformat(timespec='seconds')} "
            f"({per_chain})."
        )
