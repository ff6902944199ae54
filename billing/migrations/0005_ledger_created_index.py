from django.db import migrations, models

INDEX = models.Index(fields=["created_at"], name="ledger_created")


def add_index(apps, schema_editor):
    model = apps.get_model("billing", "LedgerEntry")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.add_index(model, INDEX, concurrently=True)  # a big ledger keeps taking writes meanwhile
    else:
        schema_editor.add_index(model, INDEX)


def remove_index(apps, schema_editor):
    model = apps.get_model("billing", "LedgerEntry")
    schema_editor.remove_index(model, INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("billing", "0004_ledger_credits"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="ledgerentry", index=INDEX)],
            database_operations=[migrations.RunPython(add_index, remove_index)],
        ),
    ]
