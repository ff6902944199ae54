"""`manage.py parley_demo_setup`: the demo user and organization of the embedded default (idempotent)."""

import base64
import hashlib
import hmac
import os

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Membership, Organization, Role, Tier, User
from accounts.services import organization_create

DEMO_EMAIL = "demo@parley.local"
DEMO_ORGANIZATION = "Demo"


def demo_password() -> str:
    """Stable across runs (derived from SECRET_KEY), different for every deployment's key."""
    digest = hmac.new(settings.SECRET_KEY.encode(), b"parley-demo-password", hashlib.sha256).digest()
    return "demo-" + base64.b32encode(digest).decode().lower().rstrip("=")[:16]


class Command(BaseCommand):
    help = "Create (or repair) the demo user demo@parley.local and its 'Demo' organization on the pro tier."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="", help="The URL to print (default: http://127.0.0.1:$PORT).")

    @transaction.atomic
    def handle(self, *args, **options):
        password = demo_password()
        user, created = User.objects.get_or_create(email=DEMO_EMAIL, defaults={"name": "Demo"})
        if created or not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        EmailAddress.objects.update_or_create(user=user, email=DEMO_EMAIL, defaults={"verified": True, "primary": True})
        pro = Tier.objects.get(slug="pro")
        # The demo user's first team organization is the demo organization, even if renamed since.
        membership = (
            Membership.objects.filter(user=user, organization__is_personal=False)
            .select_related("organization")
            .order_by("created_at")
            .first()
        )
        if membership is None:
            organization = organization_create(name=DEMO_ORGANIZATION, owner=user, tier=pro)
        else:
            organization = membership.organization
            if membership.role != Role.OWNER:
                membership.role = Role.OWNER
                membership.save(update_fields=["role"])
            if organization.tier_id != pro.id:
                Organization.objects.filter(pk=organization.pk).update(tier=pro)

        url = options["url"] or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Parley demo account "
                    + ("created" if created else "ready")
                    + f" (organization '{organization.name}', pro tier):",
                    f"  URL:      {url}/accounts/login/",
                    f"  E-mail:   {DEMO_EMAIL}",
                    f"  Password: {password}",
                    "For a staff account that can use /admin/: .venv/bin/python manage.py createsuperuser",
                    "",
                ]
            )
        )
