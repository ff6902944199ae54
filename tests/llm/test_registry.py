"""The model registry, its admin, and the llm_models / llm_chat commands."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from llm.errors import ModelUnavailable
from llm.models import ModelConfig, ProviderCall
from llm.registry import model_get, models_all, models_available

SEEDED = {"demo", "gpt-5.2-instant", "gpt-5.2", "claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5",
          "gemini-3-flash", "gemini-3-pro", "gemini-2.5-flash"}

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_keys(settings):
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = ""


def test_the_seeded_aliases_exist_with_fallbacks(no_keys):
    infos = {i.alias: i for i in models_all()}
    assert SEEDED <= set(infos)
    assert infos["gpt-5.2-instant"].fallbacks == ("claude-haiku-4-5", "gemini-3-flash")
    assert infos["claude-sonnet-4-5"].provider == "anthropic" and infos["claude-sonnet-4-5"].context_window == 200_000
    assert all(set(i.fallbacks) <= SEEDED for i in infos.values())


def test_tier_models_are_all_seeded():
    from accounts.models import Tier

    for tier in Tier.objects.all():
        assert set(tier.allowed_models) <= SEEDED


def test_models_without_a_key_are_listed_unavailable_and_not_offered(no_keys):
    assert [i.alias for i in models_available()] == ["demo"]
    assert not {i.alias: i for i in models_all()}["gpt-5.2"].available
    with pytest.raises(ModelUnavailable):
        model_get("gpt-5.2")
    assert model_get("demo").provider == "demo"


def test_a_configured_provider_makes_its_models_available(no_keys, settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    assert {i.alias for i in models_available()} == {"demo", "claude-haiku-4-5", "claude-sonnet-4-5",
                                                       "claude-opus-4-5"}


def test_unknown_and_disabled_models_are_unavailable(settings):
    settings.OPENAI_API_KEY = "sk-test"
    ModelConfig.objects.filter(alias="gpt-5.2").update(enabled=False)
    with pytest.raises(ModelUnavailable):
        model_get("gpt-5.2")
    with pytest.raises(ModelUnavailable):
        model_get("gpt-9")
    assert "gpt-5.2" not in {i.alias for i in models_all()}


def test_demo_is_available_even_without_its_row():
    ModelConfig.objects.filter(alias="demo").delete()
    assert model_get("demo").available


def test_an_empty_table_falls_back_to_the_built_in_list(no_keys):
    ModelConfig.objects.all().delete()
    assert SEEDED == {i.alias for i in models_all()}
    assert model_get("demo").alias == "demo"


def test_openai_compatible_rows(monkeypatch):
    ModelConfig.objects.create(alias="local", provider="openai_compatible", vendor_model="llama3",
                               base_url="http://127.0.0.1:11434/v1")
    ModelConfig.objects.create(alias="keyed", provider="openai_compatible", vendor_model="llama3",
                               base_url="http://127.0.0.1:8001/v1", api_key_env="PARLEY_TEST_VLLM_KEY")
    monkeypatch.delenv("PARLEY_TEST_VLLM_KEY", raising=False)
    assert model_get("local").extra["base_url"] == "http://127.0.0.1:11434/v1"  # Ollama needs no key
    with pytest.raises(ModelUnavailable):
        model_get("keyed")
    monkeypatch.setenv("PARLEY_TEST_VLLM_KEY", "k")
    assert model_get("keyed").available


def test_model_config_validation():
    from django.core.exceptions import ValidationError

    row = ModelConfig(alias="x", provider="openai_compatible", vendor_model="m", fallbacks=["x"])
    with pytest.raises(ValidationError) as raised:
        row.clean()
    assert "fallbacks" in raised.value.message_dict


def test_llm_models_command(no_keys, settings):
    settings.OPENAI_API_KEY = "sk-test"
    out = StringIO()
    call_command("llm_models", stdout=out)
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()[1:]}
    assert SEEDED <= set(lines)
    assert "available" in lines["gpt-5.2"] and "no key" in lines["claude-opus-4-5"] and "available" in lines["demo"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_llm_chat_command_streams_the_demo(settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0
    out = StringIO()
    call_command("llm_chat", "--model", "demo", "/echo Hello from the terminal", stdout=out)
    assert "Hello from the terminal" in out.getvalue() and "[finished: stop]" in out.getvalue()
    assert ProviderCall.objects.filter(model="demo", status="ok").count() == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_llm_chat_command_reports_unavailable_models(no_keys):
    with pytest.raises(CommandError, match="ModelUnavailable"):
        call_command("llm_chat", "--model", "gpt-5.2", "hi", stdout=StringIO())


@pytest.fixture
def staff_client(client, user_factory):
    from accounts.models import User

    admin = User.objects.create_superuser(email="root@example.com", password="pw-correct-horse-42")
    client.force_login(admin)
    return client


def test_admin_lists_models_and_the_read_only_call_log(staff_client):
    from django.utils import timezone

    call = ProviderCall.objects.create(request_id="r1", provider="openai", model="gpt-5.2", attempt=1,
                                       started_at=timezone.now(), status="ok", prompt_sha256="0" * 64)
    assert staff_client.get(reverse("admin:llm_modelconfig_changelist")).status_code == 200
    response = staff_client.get(reverse("admin:llm_providercall_changelist") + "?status__exact=ok")
    assert response.status_code == 200 and b"gpt-5.2" in response.content
    assert staff_client.get(reverse("admin:llm_providercall_change", args=[call.pk])).status_code == 200
    assert staff_client.get(reverse("admin:llm_providercall_add")).status_code == 403
    assert staff_client.post(reverse("admin:llm_providercall_delete", args=[call.pk]), {"post": "yes"}).status_code == 403


def test_turns_reuse_the_rows_briefly_and_an_edit_drops_them(settings):
    from llm.registry import chain_from_rows, rows_cached, rows_load

    settings.PARLEY_LLM_REGISTRY_CACHE_SECONDS = 60
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = "sk-test"
    settings.GEMINI_API_KEY = ""
    rows = rows_load()
    assert rows_cached() is rows
    # availability is computed at use: gemini-3-flash (no key) is skipped, not cached as available
    assert [m.alias for m in chain_from_rows("gpt-5.2-instant", rows)] == ["gpt-5.2-instant", "claude-haiku-4-5"]
    row = ModelConfig.objects.get(alias="claude-haiku-4-5")
    row.enabled = False
    row.save()  # the admin's save
    assert rows_cached() is None
    assert [m.alias for m in chain_from_rows("gpt-5.2-instant", rows_load())] == ["gpt-5.2-instant"]
    settings.PARLEY_LLM_REGISTRY_CACHE_SECONDS = -1
    assert rows_cached() is None
