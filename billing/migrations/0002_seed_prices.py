from django.db import migrations


def seed(apps, schema_editor):
    from billing.pricedata import load_prices

    load_prices(apps.get_model("billing", "Price"))


def unseed(apps, schema_editor):
    from billing.pricedata import read_prices

    Price = apps.get_model("billing", "Price")
    for row in read_prices():
        Price.objects.filter(model=row["model"], effective_at=row["effective_at"]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
