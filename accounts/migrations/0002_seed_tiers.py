from decimal import Decimal

from django.db import migrations

FREE_MODELS = ["demo", "gpt-5.2-instant", "claude-haiku-4-5", "gemini-3-flash"]
PRO_MODELS = FREE_MODELS + ["claude-sonnet-4-5", "gemini-2.5-flash", "gemini-3-pro", "gpt-5.2"]
ENTERPRISE_MODELS = PRO_MODELS + ["claude-opus-4-5"]

TIERS = [
    dict(
        slug="free", name="Free", monthly_budget_usd=Decimal("1.00"), requests_per_minute=10,
        tokens_per_minute=20_000, allowed_models=FREE_MODELS, max_message_chars=8_000,
        max_output_tokens=1_024, features=[],
    ),
    dict(
        slug="pro", name="Pro", monthly_budget_usd=Decimal("50.00"), requests_per_minute=60,
        tokens_per_minute=200_000, allowed_models=PRO_MODELS, max_message_chars=32_000,
        max_output_tokens=8_192, features=["tools", "api"],
    ),
    dict(
        slug="enterprise", name="Enterprise", monthly_budget_usd=Decimal("1000.00"), requests_per_minute=600,
        tokens_per_minute=2_000_000, allowed_models=ENTERPRISE_MODELS, max_message_chars=100_000,
        max_output_tokens=32_000, features=["tools", "api"],
    ),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("accounts", "Tier")
    for row in TIERS:
        Tier.objects.update_or_create(slug=row["slug"], defaults=row)


def unseed(apps, schema_editor):
    apps.get_model("accounts", "Tier").objects.filter(slug__in=[t["slug"] for t in TIERS]).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
