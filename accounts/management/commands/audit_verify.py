"""`manage.py audit_verify [--organization SLUG|ID]`: recompute the audit log's hash chains.

Exits 0 with a summary on an intact log; otherwise fails (exit 1) naming the first broken row:
its chain, id and sequence, and what is wrong (accounts.audit_integrity.audit_verify)."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.audit import PLATFORM_CHAIN
from accounts.audit_integrity import audit_verify
from accounts.models import AuditChainHead, Organization


def chain_for(value: str) -> str:
    """An organization's chain from its slug or id ("platform": the chain of no organization).
    An id with a chain head is accepted even when the organization no longer exists."""
    value = value.strip()
    if value == PLATFORM_CHAIN:
        return value
    organization = Organization.objects.filter(slug=value).first()
    if organization is None:
        try:
            organization = Organization.objects.filter(pk=value).first()
        except (ValueError, ValidationError):  # not a UUID
            organization = None
    if organization is not None:
        return str(organization.pk)
    if AuditChainHead.objects.filter(chain=value).exists():
        return value
    raise CommandError(f"No organization {value!r} (give its slug or id, or 'platform').")


class Command(BaseCommand):
    help = "Verify the audit log's hash chains; fails naming the first broken row."

    def add_arguments(self, parser):
        parser.add_argument("--organization", help="Check one chain: an organization's slug or id, or 'platform'.")

    def handle(self, *args, **options):
        chain = chain_for(options["organization"]) if options.get("organization") else None
        result = audit_verify(chain=chain)
        if result.ok:
            self.stdout.write(f"Audit log intact: {result.chains} chains, {result.rows} rows checked.")
            return
        first = result.first
        for problem in result.breaks:
            if problem is not first:
                self.stderr.write(f"also broken: {problem}")
        raise CommandError(
            f"Audit log broken: first broken row {first.event_id or '(missing)'} sequence {first.sequence} "
            f"in chain {first.chain}: {first.detail} ({first.problem}; {len(result.breaks)} of {result.chains} "
            f"chains broken, {result.rows} rows checked)."
        )
