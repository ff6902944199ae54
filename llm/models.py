"""The model registry (editable rows) and the log of every provider call."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models


class Provider(models.TextChoices):
    DEMO = "demo", "Demo (built in)"
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"


class ModelConfig(models.Model):
    """One alias users pick (e.g. `claude-sonnet-4-5`) and how to reach it."""

    alias = models.SlugField(max_length=64, unique=True, help_text="The name users and the API pick, e.g. gpt-5.2.")
    display_name = models.CharField(max_length=100, blank=True)
    provider = models.CharField(max_length=32, choices=Provider.choices)
    vendor_model = models.CharField(max_length=200, help_text="The model id the vendor's API expects.")
    context_window = models.PositiveIntegerField(default=128_000)
    max_output_tokens = models.PositiveIntegerField(default=8_192)
    supports_tools = models.BooleanField(default=True)
    fallbacks = models.JSONField(
        default=list, blank=True, help_text="Aliases tried in order when this model fails, e.g. [\"gpt-5.2\"]."
    )
    enabled = models.BooleanField(default=True)
    # openai_compatible rows: where the server is, and which env var holds its key (never the key itself)
    base_url = models.CharField(
        max_length=200, blank=True, validators=[URLValidator(schemes=["http", "https"])],
        help_text="openai_compatible only, e.g. http://127.0.0.1:8001/v1",
    )
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="openai_compatible only: name of the env var holding the API key."
    )
    position = models.PositiveIntegerField(default=100, help_text="Order in model pickers.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "alias"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.alias

    def clean(self) -> None:
        if not isinstance(self.fallbacks, list) or not all(isinstance(a, str) for a in self.fallbacks):
            raise ValidationError({"fallbacks": "A list of aliases."})
        if self.alias in self.fallbacks:
            raise ValidationError({"fallbacks": "A model cannot fall back to itself."})
        if self.provider == Provider.OPENAI_COMPATIBLE and not self.base_url:
            raise ValidationError({"base_url": "An OpenAI-compatible server needs its base URL."})
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValidationError({"api_key_env": "The name of an environment variable, e.g. VLLM_API_KEY."})


class CallStatus(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    CANCELLED = "cancelled", "Cancelled"


class ProviderCall(models.Model):
    """One attempt at one provider (each retry and fallback is its own row). Written, never edited.

    organization_id / user_id are plain UUIDs: llm imports no other app.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization_id = models.UUIDField(null=True, blank=True, db_index=True)
    user_id = models.UUIDField(null=True, blank=True)
    request_id = models.CharField(max_length=100, db_index=True)
    call_id = models.CharField(max_length=120, blank=True)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=64, help_text="The alias.")
    vendor_model = models.CharField(max_length=200, blank=True)
    attempt = models.PositiveSmallIntegerField(help_text="1 for the first try of this model, 2 for its first retry…")
    round = models.PositiveSmallIntegerField(default=1, help_text="Tool-loop round.")
    started_at = models.DateTimeField(db_index=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=CallStatus.choices)
    finish_reason = models.CharField(max_length=32, blank=True)
    error_class = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    prompt_sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["organization_id", "started_at"]), models.Index(fields=["model", "status"])]

    def __str__(self) -> str:
        return f"{self.model} #{self.attempt} {self.status}"


class ProviderCallDaily(models.Model):
    """The call log rolled up per UTC day, provider and model (llm.rollup), so the staff console
    reads a few rows a day whatever the log's size. Latencies are kept as histograms with the fixed
    buckets of llm.rollup (`{bucket index: count}`), so percentiles of any range add up exactly."""

    day = models.DateField()
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=64)
    calls = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    ttft_count = models.PositiveIntegerField(default=0, help_text="Calls that reported a first token.")
    ttft_sum_ms = models.BigIntegerField(default=0)
    ttft_histogram = models.JSONField(default=dict, blank=True)
    duration_sum_ms = models.BigIntegerField(default=0)
    duration_histogram = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = "provider calls per day"
        verbose_name_plural = "provider calls per day"
        constraints = [
            models.UniqueConstraint(fields=["day", "provider", "model"], name="unique_provider_call_day")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.provider}/{self.model}: {self.calls} calls"


class ProviderCallRollupState(models.Model):
    """Singleton: every day before `rolled_through` is in ProviderCallDaily; later days are read from the log."""

    rolled_through = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"call log rolled through {self.rolled_through}"
