"""Each vendor adapter, through its real SDK, against the fake provider over a real socket."""

import asyncio
import json
import time

import pytest

from llm import errors
from llm.chat import stream_chat
from llm.tools import toolset_for_tier
from llm.types import Finished, Message, ToolCall, ToolResult, ToolSpec, Usage
from tests.fakeprovider import (
    auth_failed,
    context_too_long,
    dropped,
    invalid_request,
    overloaded,
    quota_exceeded,
    rate_limited,
    reply,
    server_error,
    stalled,
    stream_error,
    tool_call,
)
from tests.llm.helpers import VENDORS, collect, text_of

# The registry's seeded rows are committed by the migrations, so reading them from the thread of
# database_sync_to_async needs no transactional test; the call log is tested in test_calllog.py.
pytestmark = pytest.mark.django_db
vendors = pytest.mark.parametrize("vendor", list(VENDORS))


@pytest.fixture(autouse=True)
def _no_call_log(settings):
    settings.PARLEY_LLM_CALL_LOG = False


def script(fake_provider, vendor):
    return getattr(fake_provider, vendor)


@vendors
async def test_text_streams_as_deltas_with_usage(fake_provider, make_request, vendor):
    alias = VENDORS[vendor][0]
    script(fake_provider, vendor).script([reply("Hel", "lo", ", world", usage=(12, 3))])

    stream = stream_chat(make_request(alias, Message("system", "Be brief."), "Hi"))
    events = await collect(stream)

    deltas = [e.text for e in events if type(e).__name__ == "TextDelta"]
    assert deltas == ["Hel", "lo", ", world"]
    usage = next(e for e in events if isinstance(e, Usage))
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (12, 3, 0)
    assert usage.model == alias and usage.provider == vendor and not usage.estimated
    assert events[-1] == Finished("stop")
    assert stream.usages == [usage]
    expected = {"openai": "gpt-5.2-chat-latest", "anthropic": "claude-haiku-4-5", "gemini": "gemini-3-flash-preview"}
    assert script(fake_provider, vendor).last_request.model == expected[vendor]  # the vendor's model id


@vendors
async def test_cached_input_tokens_are_reported_apart(fake_provider, make_request, vendor):
    script(fake_provider, vendor).script([reply("ok", usage=(100, 5, 900))])
    stream = stream_chat(make_request(VENDORS[vendor][0], "Hi"))
    await collect(stream)
    [usage] = stream.usages
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (100, 5, 900)


@vendors
async def test_full_tool_round_trip(fake_provider, make_request, vendor):
    fake = script(fake_provider, vendor)
    fake.script([tool_call("calculator", {"expression": "6*7"}, id="call_calc"), reply("It is ", "42.")])

    stream = stream_chat(make_request(VENDORS[vendor][0], "What is 6 times 7?"), toolset=toolset_for_tier("pro"))
    events = await collect(stream)

    call = next(e for e in events if isinstance(e, ToolCall))
    assert (call.name, call.arguments) == ("calculator", {"expression": "6*7"})
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.result == {"expression": "6*7", "result": 42} and not result.is_error
    assert text_of(events) == "It is 42."
    assert events[-1] == Finished("stop")
    assert len(stream.usages) == 2 and len({u.call_id for u in stream.usages}) == 2

    first, second = fake.requests
    sent = json.dumps(second.body)
    assert "calculator" in json.dumps(first.body)  # the tools were offered
    assert '\\"result\\": 42' in sent or '"result": 42' in sent  # the tool's answer went back to the model
    if vendor == "openai":
        assert second.body["messages"][-1] == {"role": "tool", "tool_call_id": "call_calc",
                                               "content": '{"expression": "6*7", "result": 42}'}
        assert second.body["messages"][-2]["tool_calls"][0]["id"] == "call_calc"
    elif vendor == "anthropic":
        last = second.body["messages"][-1]
        assert last["role"] == "user" and last["content"][0]["type"] == "tool_result"
        assert last["content"][0]["tool_use_id"] == "call_calc"
        assert second.body["messages"][-2]["content"][-1]["type"] == "tool_use"
    else:
        last = second.body["contents"][-1]
        assert last["parts"][0]["functionResponse"]["name"] == "calculator"
        assert last["parts"][0]["functionResponse"]["response"]["result"] == 42
        assert second.body["contents"][-2]["role"] == "model"


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_malformed_tool_arguments_go_back_as_a_tool_error(fake_provider, make_request, vendor):
    fake = script(fake_provider, vendor)
    fake.script([tool_call("calculator", '{"expression": "2+', id="bad"), reply("Sorry, let me retry.")])

    events = await collect(stream_chat(make_request(VENDORS[vendor][0], "2+?"), toolset=toolset_for_tier("pro")))

    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.is_error and "not a valid JSON" in result.result["error"]
    assert text_of(events) == "Sorry, let me retry."
    assert "not a valid JSON" in json.dumps(fake.requests[1].body)


@vendors
async def test_client_defined_tools_are_handed_over(fake_provider, make_request, vendor):
    script(fake_provider, vendor).script([tool_call("lookup", {"q": "parley"})])
    spec = ToolSpec("lookup", "Look something up.", {"type": "object", "properties": {"q": {"type": "string"}}})

    events = await collect(stream_chat(make_request(VENDORS[vendor][0], "find it", tools=(spec,))))

    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("lookup", {"q": "parley"})]
    assert not any(isinstance(e, ToolResult) for e in events)
    assert events[-1] == Finished("tool_calls")


ERROR_CASES = [
    (rate_limited(retry_after=0), errors.RateLimited, True),
    (quota_exceeded(), errors.QuotaExceeded, False),
    (overloaded(), errors.Overloaded, True),
    (server_error(500), errors.ProviderUnavailable, True),
    (server_error(503), errors.ProviderUnavailable, True),
    (auth_failed(), errors.AuthFailed, False),
    (invalid_request(), errors.InvalidRequest, False),
    (context_too_long(), errors.ContextTooLong, False),
    (stream_error("overloaded", after=0), errors.Overloaded, True),
    (stream_error("server", after=0), errors.ProviderUnavailable, True),
    (dropped(), errors.ProviderUnavailable, True),
]


@vendors
@pytest.mark.parametrize(("step", "error", "retried"), ERROR_CASES,
                         ids=lambda v: getattr(v, "kind", None) or getattr(v, "__name__", None) or "")
async def test_error_mapping_and_whether_it_is_retried(fake_provider, make_request, no_fallbacks, vendor, step,
                                                       error, retried):
    fake = script(fake_provider, vendor)
    fake.script([step, step, step])

    stream = stream_chat(make_request(VENDORS[vendor][0], "Hi"))
    with pytest.raises(error) as raised:
        await collect(stream)

    assert type(raised.value) is error or (error is errors.ProviderUnavailable and type(raised.value) is error)
    assert raised.value.provider == vendor
    assert len(fake.requests) == (3 if retried else 1)
    assert raised.value.retryable is retried


@vendors
async def test_rate_limit_retry_after_is_honoured(fake_provider, make_request, settings, vendor):
    settings.PARLEY_LLM_RETRY_MAX_DELAY = 2
    fake = script(fake_provider, vendor)
    fake.script([rate_limited(retry_after=0.3), reply("ok")])

    started = time.monotonic()
    events = await collect(stream_chat(make_request(VENDORS[vendor][0], "Hi")))

    assert text_of(events) == "ok"
    assert time.monotonic() - started >= 0.3
    assert len(fake.requests) == 2


@vendors
async def test_retry_then_success(fake_provider, make_request, vendor):
    fake = script(fake_provider, vendor)
    fake.script([overloaded(), server_error(502), reply("Finally")])

    stream = stream_chat(make_request(VENDORS[vendor][0], "Hi"))
    events = await collect(stream)

    assert text_of(events) == "Finally"
    assert len(fake.requests) == 3
    assert len(stream.usages) == 1  # the refused attempts cost nothing


@vendors
async def test_retries_exhausted_then_fallback(fake_provider, make_request, vendor):
    alias, fallback, fallback_vendor = VENDORS[vendor]
    primary = script(fake_provider, vendor)
    primary.script([overloaded(), overloaded(), overloaded()])
    script(fake_provider, fallback_vendor).then(reply("From the ", "fallback"))

    stream = stream_chat(make_request(alias, "Hi"))
    events = await collect(stream)

    assert text_of(events) == "From the fallback"
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.model == fallback and usage.provider == fallback_vendor
    assert stream.model.alias == fallback
    requested = [r.model for r in primary.requests] if vendor != fallback_vendor else [
        r.model for r in primary.requests[:3]]
    assert len(requested) == 3


@vendors
async def test_quota_exhausted_falls_back_at_once(fake_provider, make_request, vendor):
    alias, fallback, fallback_vendor = VENDORS[vendor]
    script(fake_provider, vendor).script([quota_exceeded()])
    if fallback_vendor != vendor:
        script(fake_provider, fallback_vendor).script([reply("elsewhere")])
    else:
        script(fake_provider, vendor).then(reply("elsewhere"))

    events = await collect(stream_chat(make_request(alias, "Hi")))

    assert text_of(events) == "elsewhere"
    assert len(script(fake_provider, vendor).requests) == (1 if fallback_vendor != vendor else 2)


@vendors
async def test_invalid_request_does_not_fall_back(fake_provider, make_request, vendor):
    alias, _, fallback_vendor = VENDORS[vendor]
    script(fake_provider, vendor).script([context_too_long(), reply("never")])
    if fallback_vendor != vendor:
        script(fake_provider, fallback_vendor).script([reply("never")])

    with pytest.raises(errors.ContextTooLong):
        await collect(stream_chat(make_request(alias, "Hi")))
    assert len(script(fake_provider, vendor).requests) == 1
    if fallback_vendor != vendor:
        assert script(fake_provider, fallback_vendor).requests == []


@vendors
@pytest.mark.parametrize("failure", ["error_event", "dropped"])
async def test_no_retry_after_the_first_delta(fake_provider, make_request, vendor, failure):
    fake = script(fake_provider, vendor)
    broken = stream_error("overloaded", after=2) if failure == "error_event" else dropped("one ", "two ")
    fake.script([broken, reply("never")])

    stream = stream_chat(make_request(VENDORS[vendor][0], "Hi"))
    seen = []
    with pytest.raises((errors.Overloaded, errors.ProviderUnavailable)):
        async for event in stream:
            seen.append(event)

    assert len(text_of(seen)) > 0
    assert len(fake.requests) == 1 and fake.pending == 1
    # the broken call streamed text: it is billed on an estimate
    [usage] = stream.usages
    assert usage.estimated and usage.output_tokens >= 2 and usage.input_tokens > 0


@vendors
async def test_slow_first_byte_times_out_then_retries(fake_provider, make_request, settings, vendor):
    settings.PARLEY_LLM_FIRST_TOKEN_TIMEOUT = 0.3
    fake = script(fake_provider, vendor)
    fake.script([reply("late", first_byte_delay=2.0), reply("on time")])

    started = time.monotonic()
    events = await collect(stream_chat(make_request(VENDORS[vendor][0], "Hi")))

    assert text_of(events) == "on time"
    assert time.monotonic() - started < 1.5
    assert len(fake.requests) == 2


@vendors
async def test_stalled_stream_times_out(fake_provider, make_request, settings, no_fallbacks, vendor):
    settings.PARLEY_LLM_IDLE_TIMEOUT = 0.3
    script(fake_provider, vendor).script([stalled("first ")])

    stream = stream_chat(make_request(VENDORS[vendor][0], "Hi"))
    seen = []
    started = time.monotonic()
    with pytest.raises(errors.Timeout):
        async for event in stream:
            seen.append(event)
    assert text_of(seen) == "first "
    assert time.monotonic() - started < 2
    assert stream.usages[0].estimated


@vendors
async def test_aclose_closes_the_upstream_connection(fake_provider, make_request, vendor):
    fake = script(fake_provider, vendor)
    fake.script([reply(*[f"w{i} " for i in range(200)], delta_delay=0.02)])

    stream = stream_chat(make_request(VENDORS[vendor][0], "Hi"))
    seen = 0
    async for _event in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()
    await stream.aclose()  # twice is fine

    for _ in range(100):
        if fake.aborted:
            break
        await asyncio.sleep(0.02)
    assert fake.aborted == 1
    [usage] = stream.usages
    assert usage.estimated and usage.output_tokens >= 3
