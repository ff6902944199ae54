from django.core.management.base import BaseCommand

from billing.models import Price
from billing.pricedata import load_prices


class Command(BaseCommand):
    help = "Add the prices of billing/data/prices.json that are not in the price table yet."

    def handle(self, *args, **options):
        added = load_prices(Price)
        self.stdout.write(f"{added} price rows added.")
