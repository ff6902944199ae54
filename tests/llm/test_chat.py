"""stream_chat: retry policy, tool loop limits, cancellation, usages, and the call log."""

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async

from llm import chat, errors
from llm.chat import backoff_delay, stream_chat
from llm.models import ModelConfig, ProviderCall
from llm.tools import Tool, ToolSet, toolset_for_tier
from llm.types import Finished, Message, TextDelta, ToolCall, ToolResult
from tests.fakeprovider import auth_failed, overloaded, rate_limited, reply, stalled, tool_call
from tests.llm.helpers import collect, text_of

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def rows(request_id: str) -> list[ProviderCall]:
    return list(ProviderCall.objects.filter(request_id=request_id).order_by("started_at", "attempt"))


rows_async = sync_to_async(rows)


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling(settings):
    settings.PARLEY_LLM_RETRY_BASE_DELAY = 1.0
    settings.PARLEY_LLM_RETRY_MAX_DELAY = 5.0
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (8, 5.0)]:
        delays = [backoff_delay(attempt) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.7 and min(delays) < ceiling * 0.3  # spread over the whole range


def test_backoff_honours_retry_after_and_skips_long_ones(settings):
    settings.PARLEY_LLM_RETRY_BASE_DELAY = 0.1
    settings.PARLEY_LLM_RETRY_MAX_DELAY = 5.0
    assert backoff_delay(1, retry_after=3.0) >= 3.0
    assert backoff_delay(1, retry_after=60.0) is None  # too long to wait before a first token: fall back


async def test_a_retry_after_longer_than_the_longest_backoff_falls_back_at_once(fake_provider, make_request):
    fake_provider.openai.script([rate_limited(retry_after=120)])
    fake_provider.anthropic.script([reply("fallback")])
    events = await collect(stream_chat(make_request("gpt-5.2-instant", "Hi")))
    assert text_of(events) == "fallback"
    assert len(fake_provider.openai.requests) == 1


# --- the call log ------------------------------------------------------------------------------


async def test_every_attempt_is_one_call_log_row(fake_provider, make_request):
    org, user = uuid.uuid4(), uuid.uuid4()
    fake_provider.openai.script([overloaded(), overloaded(), overloaded()])
    fake_provider.anthropic.script([overloaded(), reply("Hi ", "there", usage=(30, 2, 10))])
    request = make_request("gpt-5.2-instant", "Hello", organization_id=org, user_id=user)

    await collect(stream_chat(request))

    log = await rows_async(request.request_id)
    assert [(r.model, r.attempt, r.status) for r in log] == [
        ("gpt-5.2-instant", 1, "error"), ("gpt-5.2-instant", 2, "error"), ("gpt-5.2-instant", 3, "error"),
        ("claude-haiku-4-5", 1, "error"), ("claude-haiku-4-5", 2, "ok"),
    ]
    assert {r.error_class for r in log[:4]} == {"Overloaded"}
    ok = log[-1]
    assert (ok.input_tokens, ok.output_tokens, ok.cached_input_tokens) == (30, 2, 10)
    assert ok.organization_id == org and ok.user_id == user and ok.provider == "anthropic"
    assert ok.time_to_first_token_ms is not None and ok.duration_ms >= ok.time_to_first_token_ms
    assert len(ok.prompt_sha256) == 64 and ok.finish_reason == "stop"
    assert len({r.call_id for r in log}) == 5


async def test_a_call_log_row_the_database_refused_is_written_later(fake_provider, make_request, monkeypatch):
    from django.db import OperationalError

    from llm import calllog

    fake_provider.openai.script([reply("Hi", usage=(12, 1))])
    request = make_request("gpt-5.2-instant", "Hello")
    real, failures = calllog._write, []

    def flaky(attempt):
        if not failures:
            failures.append(attempt.call_id)
            raise OperationalError("the database system is shutting down")
        real(attempt)

    monkeypatch.setattr(calllog, "_write_async", sync_to_async(flaky))
    monkeypatch.setattr(calllog, "RETRY_DELAYS", (0.05, 0.05))
    assert text_of(await collect(stream_chat(request))) == "Hi"
    assert failures and await rows_async(request.request_id) == []  # the stream did not wait for it
    async with asyncio.timeout(5):
        while not await rows_async(request.request_id):  # noqa: ASYNC110 - a row in another thread's database write
            await asyncio.sleep(0.02)
    [row] = await rows_async(request.request_id)
    assert (row.input_tokens, row.output_tokens, row.status) == (12, 1, "ok")


async def test_no_api_key_is_stored_or_logged(fake_provider, make_request, settings, caplog):
    key = settings.OPENAI_API_KEY
    fake_provider.openai.script([auth_failed(message=f"Incorrect API key provided: {key}. Bearer {key}")])
    fake_provider.anthropic.script([auth_failed(message=f"invalid x-api-key {settings.ANTHROPIC_API_KEY}")])
    fake_provider.gemini.script([auth_failed()])
    request = make_request("gpt-5.2-instant", "Hi")

    with pytest.raises(errors.AuthFailed) as raised:
        await collect(stream_chat(request))

    assert key not in raised.value.message  # the last fallback's error
    log = await rows_async(request.request_id)
    assert [r.provider for r in log] == ["openai", "anthropic", "gemini"]  # auth errors fall back at once
    stored = " ".join(r.error_message for r in log)
    assert "[redacted]" in log[0].error_message and "[redacted]" in log[1].error_message
    assert key not in stored and settings.ANTHROPIC_API_KEY not in stored
    assert key not in caplog.text and settings.ANTHROPIC_API_KEY not in caplog.text


async def test_a_cancelled_stream_is_logged_and_billed_on_an_estimate(fake_provider, make_request):
    fake_provider.openai.script([reply(*[f"w{i} " for i in range(100)], delta_delay=0.02)])
    request = make_request("gpt-5.2-instant", "Hi")
    stream = stream_chat(request)
    got = []
    three = asyncio.Event()

    async def consume():
        async for event in stream:
            got.append(event)
            if len(got) == 3:
                three.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(three.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()

    [usage] = stream.usages
    assert usage.estimated and usage.output_tokens >= 3
    [row] = await rows_async(request.request_id)
    assert row.status == "cancelled" and row.usage_estimated


async def test_a_broken_stream_without_usage_is_billed_on_an_estimate(fake_provider, make_request):
    fake_provider.anthropic.script([stalled("one ", "two ")])
    stream = stream_chat(make_request("claude-haiku-4-5", "Hi"))
    async for event in stream:
        if isinstance(event, TextDelta) and event.text == "two ":
            break
    await stream.aclose()
    [usage] = stream.usages
    assert usage.estimated and usage.model == "claude-haiku-4-5" and usage.output_tokens >= 2


# --- the tool loop ------------------------------------------------------------------------------


async def test_the_tool_loop_stops_after_the_maximum_number_of_rounds(fake_provider, make_request):
    fake_provider.openai.script([tool_call("calculator", {"expression": f"{i}+1"}) for i in range(5)])
    fake_provider.openai.then(reply("Done."))

    stream = stream_chat(make_request("gpt-5.2-instant", "count"), toolset=toolset_for_tier("pro"),
                         max_tool_rounds=2)
    events = await collect(stream)

    assert [e.result["result"] for e in events if isinstance(e, ToolResult)] == [1, 2]
    last = fake_provider.openai.requests[-1].body
    assert last["tool_choice"] == "none"  # the last round must answer
    assert len(fake_provider.openai.requests) == 3
    assert events[-1] == Finished("tool_calls")  # it still asked for a tool: handed over, not run


async def test_a_failing_tool_goes_back_to_the_model_as_an_error(fake_provider, make_request):
    async def broken(**kwargs):
        raise RuntimeError("disk on fire")

    toolset = ToolSet([Tool("broken", "Always fails.", {"type": "object"}, broken)])
    fake_provider.openai.script([tool_call("broken", {}), reply("It failed, sorry.")])

    events = await collect(stream_chat(make_request("gpt-5.2-instant", "go"), toolset=toolset))

    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.is_error and "RuntimeError" in result.result["error"]
    assert text_of(events) == "It failed, sorry."
    sent = fake_provider.openai.requests[1].body["messages"][-1]
    assert sent["role"] == "tool" and "error" in json.loads(sent["content"])


async def test_arguments_are_validated_against_the_schema(fake_provider, make_request):
    fake_provider.openai.script([tool_call("calculator", {"expr": "1+1"}), reply("ok")])
    events = await collect(stream_chat(make_request("gpt-5.2-instant", "go"), toolset=toolset_for_tier("pro")))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.is_error and "Invalid arguments" in result.result["error"]


async def test_tool_calls_are_not_repeated_by_a_retry(fake_provider, make_request):
    fake_provider.openai.script([overloaded(), tool_call("calculator", {"expression": "1+1"}), reply("2")])
    events = await collect(stream_chat(make_request("gpt-5.2-instant", "go"), toolset=toolset_for_tier("pro")))
    assert len([e for e in events if isinstance(e, ToolCall)]) == 1
    assert text_of(events) == "2"


async def test_unknown_model_is_unavailable(make_request):
    with pytest.raises(errors.ModelUnavailable):
        await collect(stream_chat(make_request("no-such-model", "Hi")))


async def test_unconfigured_fallbacks_are_skipped(fake_provider, make_request, settings):
    settings.ANTHROPIC_API_KEY = ""
    fake_provider.openai.script([overloaded(), overloaded(), overloaded()])
    fake_provider.gemini.script([reply("gemini answers")])
    events = await collect(stream_chat(make_request("gpt-5.2-instant", "Hi")))
    assert text_of(events) == "gemini answers"
    assert fake_provider.anthropic.requests == []


async def test_openai_compatible_server_with_its_own_key(fake_provider, make_request, monkeypatch):
    monkeypatch.setenv("LOCAL_VLLM_KEY", "local-secret-key")
    await sync_to_async(ModelConfig.objects.create)(
        alias="local-llama", provider="openai_compatible", vendor_model="meta-llama/Llama-3.1-8B-Instruct",
        base_url=fake_provider.openai_base_url, api_key_env="LOCAL_VLLM_KEY", context_window=8192,
        max_output_tokens=512,
    )
    fake_provider.openai.script([reply("from ", "vllm")])

    events = await collect(stream_chat(make_request("local-llama", "Hi", max_output_tokens=100)))

    assert text_of(events) == "from vllm"
    sent = fake_provider.openai.last_request
    assert sent.headers["authorization"] == "Bearer local-secret-key"
    assert sent.body["model"] == "meta-llama/Llama-3.1-8B-Instruct" and sent.body["max_tokens"] == 100


async def test_anthropic_output_tokens_are_cumulative_not_summed(fake_provider, make_request):
    # message_start says output_tokens=1, then two message_delta events carry running totals 3 and 7:
    # the total is 7 (not 8, 10 or 11)
    fake_provider.anthropic.script([reply("a", "b", usage=(40, 7))])
    stream = stream_chat(make_request("claude-haiku-4-5", "Hi"))
    await collect(stream)
    assert stream.usages[0].output_tokens == 7


async def test_anthropic_caches_a_long_system_prompt(fake_provider, make_request, settings):
    settings.PARLEY_LLM_CACHE_MIN_CHARS = 100
    long_system = "You are a careful assistant. " * 10
    fake_provider.anthropic.script([reply("ok", usage=(5, 1, 250)), reply("ok")])

    stream = stream_chat(make_request("claude-haiku-4-5", Message("system", long_system), "Hi"))
    await collect(stream)
    await collect(stream_chat(make_request("claude-haiku-4-5", Message("system", "Short."), "Hi")))

    first, second = fake_provider.anthropic.requests
    assert first.body["system"] == [{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}]
    assert second.body["system"] == "Short."
    assert stream.usages[0].cached_input_tokens == 250


async def test_gemini_uses_api_v1_and_a_system_instruction(fake_provider, make_request):
    fake_provider.gemini.script([reply("ok")])
    await collect(stream_chat(make_request("gemini-3-pro", Message("system", "Be terse."), "Hi")))
    sent = fake_provider.gemini.last_request
    assert sent.path.startswith("/v1/models/gemini-3-pro-preview:streamGenerateContent")
    assert sent.body["systemInstruction"]["parts"][0]["text"] == "Be terse."
    assert sent.headers["x-goog-api-key"]


def test_chat_module_imports_no_vendor_sdk():
    source = open(chat.__file__).read()
    assert "import openai" not in source and "import anthropic" not in source and "genai" not in source


async def test_a_complete_stream_without_usage_is_billed_on_an_estimate(fake_provider, make_request):
    # e.g. an OpenAI-compatible server that ignores stream_options.include_usage
    fake_provider.openai.script([reply("Hello", " there", usage=None)])
    request = make_request("gpt-5.2-instant", "Hi")
    stream = stream_chat(request)
    events = await collect(stream)
    [usage] = stream.usages
    assert usage.estimated and usage.output_tokens == 2 and usage.input_tokens > 0
    assert usage in events and usage.call_id == f"{request.request_id}:1"


async def test_an_adapter_bug_ends_as_a_typed_error(make_request, monkeypatch):
    class Broken:
        name = "demo"

        async def stream(self, request, model):
            yield TextDelta("a")
            raise KeyError("bug")

    monkeypatch.setattr(chat, "provider_get", lambda name: Broken())
    request = make_request("demo", "Hi")
    stream = stream_chat(request)
    with pytest.raises(errors.ProviderUnavailable) as raised:
        await collect(stream)
    assert raised.value.__cause__ is None and "KeyError" in raised.value.message
    [row] = await rows_async(request.request_id)
    assert row.status == "error" and row.error_class == "KeyError"
    assert stream.usages[0].estimated


async def test_a_slow_caller_is_not_a_stalled_provider(fake_provider, make_request, settings):
    settings.PARLEY_LLM_IDLE_TIMEOUT = 0.2
    fake_provider.openai.script([reply("one ", "two ", "three")])
    stream = stream_chat(make_request("gpt-5.2-instant", "Hi"))
    seen = []
    async for event in stream:
        seen.append(event)
        await asyncio.sleep(0.35)  # longer than the idle timeout, between every event
    assert text_of(seen) == "one two three" and seen[-1] == Finished("stop")


async def test_a_stall_after_a_slow_caller_still_times_out(fake_provider, make_request, settings, no_fallbacks):
    settings.PARLEY_LLM_IDLE_TIMEOUT = 0.2
    fake_provider.openai.script([stalled("one ", "two ")])
    stream = stream_chat(make_request("gpt-5.2-instant", "Hi"))
    seen = []
    with pytest.raises(errors.Timeout):
        async with asyncio.timeout(3):
            async for event in stream:
                seen.append(event)
                if len(seen) == 1:
                    await asyncio.sleep(0.5)  # the watchdog fires while the caller is busy
    assert text_of(seen) == "one two "


# --- which models may serve a call ------------------------------------------------------------------


async def test_a_fallback_without_tools_is_skipped_when_the_request_sends_tools(fake_provider, make_request):
    from llm.defaults import default_rows
    from llm.types import ToolSpec

    def add_rows():
        if not ModelConfig.objects.exists():  # an earlier transactional test flushed the seeded rows
            ModelConfig.objects.bulk_create(default_rows())
        ModelConfig.objects.create(alias="no-tools", provider="openai", vendor_model="gpt-no-tools",
                                   supports_tools=False)

    await sync_to_async(add_rows)()
    spec = ToolSpec("lookup", "Look something up.", {"type": "object", "properties": {}})
    fake_provider.openai.script([overloaded(), overloaded(), overloaded(), reply("never")])
    fake_provider.gemini.script([reply("gemini has tools")])

    stream = stream_chat(make_request("gpt-5.2-instant", "Hi", tools=(spec,),
                                      models=("gpt-5.2-instant", "no-tools", "gemini-3-flash")))
    events = await collect(stream)

    assert text_of(events) == "gemini has tools" and stream.model.alias == "gemini-3-flash"
    assert [r.model for r in fake_provider.openai.requests] == ["gpt-5.2-chat-latest"] * 3  # never gpt-no-tools
    assert fake_provider.gemini.last_request.body["tools"]

    # as the primary, it is refused: the client's tools would be dropped
    with pytest.raises(errors.InvalidRequest) as raised:
        await collect(stream_chat(make_request("no-tools", "Hi", tools=(spec,))))
    assert raised.value.param == "tools"
    assert len(fake_provider.openai.requests) == 3
