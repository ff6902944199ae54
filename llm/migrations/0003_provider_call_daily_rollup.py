from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("llm", "0002_seed_models"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProviderCallDaily",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateField()),
                ("provider", models.CharField(max_length=32)),
                ("model", models.CharField(max_length=64)),
                ("calls", models.PositiveIntegerField(default=0)),
                ("errors", models.PositiveIntegerField(default=0)),
                ("cancelled", models.PositiveIntegerField(default=0)),
                ("input_tokens", models.BigIntegerField(default=0)),
                ("output_tokens", models.BigIntegerField(default=0)),
                (
                    "ttft_count",
                    models.PositiveIntegerField(default=0, help_text="Calls that reported a first token."),
                ),
                ("ttft_sum_ms", models.BigIntegerField(default=0)),
                ("ttft_histogram", models.JSONField(blank=True, default=dict)),
                ("duration_sum_ms", models.BigIntegerField(default=0)),
                ("duration_histogram", models.JSONField(blank=True, default=dict)),
            ],
            options={
                "verbose_name": "provider calls per day",
                "verbose_name_plural": "provider calls per day",
                "constraints": [
                    models.UniqueConstraint(fields=("day", "provider", "model"), name="unique_provider_call_day")
                ],
            },
        ),
        migrations.CreateModel(
            name="ProviderCallRollupState",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("rolled_through", models.DateField(blank=True, null=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
        ),
    ]
