"""The built-in demo model: offline, deterministic, scriptable by triggers in the last user message."""

import time

import pytest

from llm import errors
from llm.chat import stream_chat
from llm.tokens import count_text
from llm.tools import toolset_for_tier
from llm.types import Finished, Message, TextDelta, ToolCall, ToolResult, Usage
from tests.llm.helpers import collect, text_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_call_log(settings):
    settings.PARLEY_LLM_CALL_LOG = False


async def test_echo_answers_exactly_the_text(make_request):
    text = "<script>alert('x')</script> **bold**  two  spaces\nand a line"
    events = await collect(stream_chat(make_request("demo", f"/echo {text}")))
    assert text_of(events) == text
    assert len([e for e in events if isinstance(e, TextDelta)]) > 3  # streamed in pieces
    assert events[-1] == Finished("stop")


async def test_plain_answer_is_deterministic_and_reports_usage(make_request):
    first = await collect(stream_chat(make_request("demo", "Tell me about Parley")))
    second = await collect(stream_chat(make_request("demo", "Tell me about Parley")))
    assert text_of(first) == text_of(second) and "demo model" in text_of(first)
    usage = next(e for e in first if isinstance(e, Usage))
    assert usage.input_tokens > 0 and usage.output_tokens == count_text(text_of(first))
    assert usage.provider == "demo" and not usage.estimated


async def test_long_answer(make_request):
    events = await collect(stream_chat(make_request("demo", "/long")))
    assert count_text(text_of(events)) >= 350


async def test_fail_breaks_off_after_a_few_deltas(make_request):
    stream = stream_chat(make_request("demo", "/fail"))
    seen = []
    with pytest.raises(errors.ProviderUnavailable):
        async for event in stream:
            seen.append(event)
    assert len(seen) >= 3 and all(isinstance(e, TextDelta) for e in seen)
    assert stream.usages[0].estimated  # no retry after the first delta, billed on an estimate


async def test_tool_trigger_runs_the_tool_loop(make_request):
    stream = stream_chat(make_request("demo", '/tool calculator {"expression": "2+2"}'), toolset=toolset_for_tier("free"))
    events = await collect(stream)

    call = next(e for e in events if isinstance(e, ToolCall))
    assert (call.name, call.arguments) == ("calculator", {"expression": "2+2"})
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.result["result"] == 4
    assert "= 4" in text_of(events)
    assert events[-1] == Finished("stop")
    assert len(stream.usages) == 2


async def test_tool_trigger_without_tools_just_answers(make_request):
    events = await collect(stream_chat(make_request("demo", '/tool calculator {"expression": "2+2"}')))
    assert not any(isinstance(e, ToolCall) for e in events)
    assert "not available" in text_of(events)


async def test_tool_trigger_with_bad_json_is_a_tool_error(make_request):
    events = await collect(stream_chat(make_request("demo", "/tool calculator {oops"), toolset=toolset_for_tier("free")))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.is_error and "error" in text_of(events)


async def test_the_pace_is_configurable(make_request, settings):
    settings.PARLEY_DEMO_TOKEN_DELAY = 0.02
    started = time.monotonic()
    events = await collect(stream_chat(make_request("demo", "/echo one two three four five six")))
    assert time.monotonic() - started >= 0.1
    assert text_of(events) == "one two three four five six"


async def test_triggers_are_read_from_the_last_user_message(make_request):
    events = await collect(stream_chat(make_request(
        "demo", Message("system", "/echo no"), "/echo first", Message("assistant", "first"), "/echo second")))
    assert text_of(events) == "second"


async def test_max_output_tokens_cuts_the_answer(make_request):
    events = await collect(stream_chat(make_request("demo", "/long", max_output_tokens=5)))
    assert len([e for e in events if isinstance(e, TextDelta)]) == 5
    assert events[-1] == Finished("length")
