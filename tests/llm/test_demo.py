"""The built-in demo model: offline, deterministic, scriptable by triggers in the last user message."""

import json
import time

import pytest

from llm import errors
from llm.chat import stream_chat
from llm.tokens import count_text
from llm.tools import toolset_for_tier
from llm.types import Finished, Message, TextDelta, ToolCall, ToolResult, ToolSpec, Usage
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


# --- OpenAI parameters, emulated (docs/demo.md) ----------------------------------------------


async def test_stop_cuts_the_answer_before_the_first_stop_sequence(make_request):
    events = await collect(stream_chat(make_request("demo", "/echo one two STOP three END four",
                                                    stop=("END", "STOP"))))
    assert text_of(events) == "one two "  # the earliest one, itself not included
    assert events[-1] == Finished("stop")
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.output_tokens == count_text("one two ")


async def test_stop_that_never_occurs_changes_nothing(make_request):
    events = await collect(stream_chat(make_request("demo", "/echo all of it", stop=("zzz",))))
    assert text_of(events) == "all of it" and events[-1] == Finished("stop")


async def test_json_object_answers_a_json_object(make_request):
    events = await collect(stream_chat(make_request("demo", "Tell me about Parley",
                                                    response_format={"type": "json_object"})))
    value = json.loads(text_of(events))
    assert isinstance(value, dict) and "demo model" in value["answer"]
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1  # still streamed in pieces


async def test_json_object_echoes_a_json_object_as_it_is(make_request):
    events = await collect(stream_chat(make_request("demo", '/echo {"a": [1, 2], "b": "x"}',
                                                    response_format={"type": "json_object"})))
    assert json.loads(text_of(events)) == {"a": [1, 2], "b": "x"}
    events = await collect(stream_chat(make_request("demo", "/echo [1, 2]", response_format={"type": "json_object"})))
    assert json.loads(text_of(events)) == {"answer": "[1, 2]"}  # an array is not an object: wrapped


PERSON = {
    "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer"}},
                      "required": ["kind", "age"], "additionalProperties": False}},
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 120},
        "height": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
        "admin": {"type": "boolean"},
        "role": {"type": "string", "enum": ["owner", "member"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3, "uniqueItems": True},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "height", "admin", "role", "tags", "pets", "nickname"],
    "additionalProperties": False,
}


async def test_json_schema_answers_an_instance_valid_against_the_schema(make_request):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    events = await collect(stream_chat(make_request("demo", "Who?", response_format=response_format)))

    value = json.loads(text_of(events))
    assert events[-1] == Finished("stop")
    # validated by hand, keyword by keyword
    assert set(value) == set(PERSON["required"])  # every required key, nothing else (additionalProperties)
    assert isinstance(value["name"], str) and len(value["name"]) >= 12
    assert type(value["age"]) is int and 18 <= value["age"] <= 120
    assert isinstance(value["height"], int | float) and not isinstance(value["height"], bool)
    assert 0 < value["height"] < 3
    assert value["admin"] in (True, False)
    assert value["role"] in ("owner", "member")
    assert 2 <= len(value["tags"]) <= 3 and len(set(value["tags"])) == len(value["tags"])
    assert all(isinstance(tag, str) for tag in value["tags"])
    assert value["pets"] and all(set(p) == {"kind", "age"} and p["kind"] in ("cat", "dog") and type(p["age"]) is int
                                 for p in value["pets"])
    assert value["nickname"] is None or isinstance(value["nickname"], str)


async def test_json_schema_with_stop_and_max_tokens_still_applies_them(make_request):
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": PERSON}}
    cut = await collect(stream_chat(make_request("demo", "Who?", response_format=response_format, max_output_tokens=2)))
    assert cut[-1] == Finished("length")  # a real model's JSON is cut by the token limit too


async def test_the_same_seed_gives_the_same_answer(make_request):
    first = await collect(stream_chat(make_request("demo", "Tell me something", seed=42)))
    again = await collect(stream_chat(make_request("demo", "Tell me something", seed=42)))
    assert text_of(first) == text_of(again)


LOOKUP = ToolSpec("lookup", "Look something up.", {
    "type": "object", "properties": {"q": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
    "required": ["q", "limit"], "additionalProperties": False})
CLOCK = ToolSpec("clock", "What time is it.", {"type": "object", "properties": {}})


async def test_tool_choice_required_calls_a_tool_with_arguments_valid_for_its_schema(make_request):
    events = await collect(stream_chat(make_request("demo", "Hi", tools=(LOOKUP, CLOCK), tool_choice="required")))
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert call.name == "lookup"  # no /tool trigger: the first tool
    assert set(call.arguments) == {"q", "limit"} and isinstance(call.arguments["q"], str)
    assert type(call.arguments["limit"]) is int and call.arguments["limit"] >= 1
    assert events[-1] == Finished("tool_calls")


async def test_tool_choice_by_name_calls_that_tool(make_request):
    events = await collect(stream_chat(make_request("demo", '/tool lookup {"q": "x", "limit": 2}',
                                                    tools=(LOOKUP, CLOCK), tool_choice="clock")))
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert (call.name, call.arguments) == ("clock", {})
    events = await collect(stream_chat(make_request("demo", '/tool lookup {"q": "x", "limit": 2}',
                                                    tools=(LOOKUP, CLOCK), tool_choice="lookup")))
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert (call.name, call.arguments) == ("lookup", {"q": "x", "limit": 2})  # the message's arguments


async def test_tool_choice_none_never_calls(make_request):
    events = await collect(stream_chat(make_request("demo", '/tool clock {}', tools=(CLOCK,), tool_choice="none")))
    assert not any(isinstance(e, ToolCall) for e in events) and "not available" in text_of(events)


@pytest.mark.parametrize(("tools", "choice"), [((), "required"), ((CLOCK,), "lookup")])
async def test_a_tool_choice_that_cannot_be_met_is_an_invalid_request(make_request, tools, choice):
    with pytest.raises(errors.InvalidRequest):
        await collect(stream_chat(make_request("demo", "Hi", tools=tools, tool_choice=choice)))


async def test_a_tool_call_with_a_response_format_comes_without_text(make_request):
    events = await collect(stream_chat(make_request("demo", "/tool clock {}", tools=(CLOCK,),
                                                    response_format={"type": "json_object"})))
    assert text_of(events) == "" and [e.name for e in events if isinstance(e, ToolCall)] == ["clock"]
