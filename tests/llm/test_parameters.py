"""OpenAI chat-completions parameters: each reaches each provider with the same meaning, through its
real SDK against the fake provider, or the model is refused (primary) or skipped (fallback)."""

import json

import pytest
from asgiref.sync import sync_to_async

from llm import errors
from llm.chat import stream_chat, unsupported_params
from llm.providers import capabilities, provider_get
from llm.registry import chain_for, model_get, serving_chain
from llm.types import ChatRequest, Message, ToolSpec
from tests.fakeprovider import overloaded, reply, stream_error
from tests.llm.helpers import VENDORS, collect, text_of

pytestmark = pytest.mark.django_db

LOOKUP = ToolSpec("lookup", "Look something up.", {"type": "object", "properties": {"q": {"type": "string"}},
                                                    "required": ["q"]})
OTHER = ToolSpec("other", "Another tool.", {"type": "object", "properties": {}})
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


@pytest.fixture(autouse=True)
def _no_call_log(settings):
    settings.PARLEY_LLM_CALL_LOG = False


def fake_of(fake_provider, vendor):
    return getattr(fake_provider, vendor)


async def sent_params(fake_provider, vendor, make_request, **options) -> dict:
    """Stream one call with these options; the parameters the vendor received."""
    fake = fake_of(fake_provider, vendor)
    fake.script([reply("ok")])
    await collect(stream_chat(make_request(VENDORS[vendor][0], "Hi", models=(), **options)))
    [sent] = fake.requests
    return sent.params


# --- each parameter in each vendor's shape ------------------------------------------------------


async def test_openai_receives_every_parameter_as_it_is(fake_provider, make_request):
    params = await sent_params(
        fake_provider, "openai", make_request, stop=("END", "###"), seed=7, top_p=0.5, user="end-user-42",
        presence_penalty=0.25, frequency_penalty=-0.5, response_format=JSON_SCHEMA, tools=(LOOKUP,),
        tool_choice="lookup", parallel_tool_calls=False, temperature=0.2,
    )
    assert params["stop"] == ["END", "###"]
    assert params["seed"] == 7 and params["top_p"] == 0.5 and params["user"] == "end-user-42"
    assert params["presence_penalty"] == 0.25 and params["frequency_penalty"] == -0.5
    assert params["response_format"] == JSON_SCHEMA
    assert params["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert params["parallel_tool_calls"] is False and params["temperature"] == 0.2


async def test_openai_json_object_and_no_parallel_flag_without_tools(fake_provider, make_request):
    params = await sent_params(fake_provider, "openai", make_request, response_format={"type": "json_object"},
                               parallel_tool_calls=False)
    assert params["response_format"] == {"type": "json_object"}
    assert "parallel_tool_calls" not in params  # OpenAI refuses it without tools; it means nothing then


async def test_unset_parameters_are_not_sent(fake_provider, make_request):
    for vendor in VENDORS:
        params = await sent_params(fake_provider, vendor, make_request, response_format={"type": "text"})
        assert set(params) <= {"max_tokens", "max_completion_tokens", "maxOutputTokens"}, (vendor, params)


async def test_anthropic_receives_them_in_its_shape(fake_provider, make_request):
    params = await sent_params(
        fake_provider, "anthropic", make_request, stop=("END", "###"), top_p=0.5, user="end-user-42",
        response_format=JSON_SCHEMA, tools=(LOOKUP,), tool_choice="required", parallel_tool_calls=False,
    )
    assert params["stop_sequences"] == ["END", "###"]
    assert params["top_p"] == 0.5
    assert params["metadata"] == {"user_id": "end-user-42"}
    assert params["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert params["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_gemini_receives_them_in_its_generation_config(fake_provider, make_request):
    params = await sent_params(
        fake_provider, "gemini", make_request, stop=("END", "###"), seed=7, top_p=0.5, presence_penalty=0.25,
        frequency_penalty=-0.5, response_format=JSON_SCHEMA, tools=(LOOKUP,), tool_choice="lookup",
    )
    assert params["stopSequences"] == ["END", "###"]
    assert params["seed"] == 7 and params["topP"] == 0.5
    assert params["presencePenalty"] == 0.25 and params["frequencyPenalty"] == -0.5
    assert params["responseMimeType"] == "application/json"
    assert params["responseJsonSchema"] == SCHEMA
    assert params["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}


async def test_gemini_json_object_is_json_without_a_schema(fake_provider, make_request):
    params = await sent_params(fake_provider, "gemini", make_request, response_format={"type": "json_object"})
    assert params["responseMimeType"] == "application/json"
    assert "responseJsonSchema" not in params and "responseSchema" not in params


TOOL_CHOICES = {
    "openai": {"auto": "auto", "none": "none", "required": "required",
               "lookup": {"type": "function", "function": {"name": "lookup"}}},
    "anthropic": {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"},
                  "lookup": {"type": "tool", "name": "lookup"}},
    "gemini": {"auto": {"functionCallingConfig": {"mode": "AUTO"}},
               "none": {"functionCallingConfig": {"mode": "NONE"}},
               "required": {"functionCallingConfig": {"mode": "ANY"}},
               "lookup": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}},
}


@pytest.mark.parametrize("vendor", list(VENDORS))
@pytest.mark.parametrize("choice", ["auto", "none", "required", "lookup"])
async def test_tool_choice_variants(fake_provider, make_request, vendor, choice):
    params = await sent_params(fake_provider, vendor, make_request, tools=(LOOKUP, OTHER), tool_choice=choice)
    sent = params["toolConfig"] if vendor == "gemini" else params["tool_choice"]
    assert sent == TOOL_CHOICES[vendor][choice]


@pytest.mark.parametrize("choice", [None, "auto", "none", "required", "lookup"])
async def test_anthropic_parallel_tool_calls_false_disables_parallel_tool_use(fake_provider, make_request, choice):
    params = await sent_params(fake_provider, "anthropic", make_request, tools=(LOOKUP, OTHER), tool_choice=choice,
                               parallel_tool_calls=False)
    expected = {**TOOL_CHOICES["anthropic"][choice or "auto"]}
    if expected["type"] != "none":
        expected["disable_parallel_tool_use"] = True
    assert params["tool_choice"] == expected


async def test_anthropic_parallel_tool_calls_true_is_its_default(fake_provider, make_request):
    params = await sent_params(fake_provider, "anthropic", make_request, tools=(LOOKUP,), parallel_tool_calls=True)
    assert "tool_choice" not in params  # parallel tool use is Anthropic's default, as OpenAI's


# --- refused on the primary, never dropped -----------------------------------------------------


@pytest.mark.parametrize(("vendor", "options", "param"), [
    ("anthropic", {"seed": 7}, "seed"),
    ("anthropic", {"presence_penalty": 0.5}, "presence_penalty"),
    ("anthropic", {"frequency_penalty": 0.5}, "frequency_penalty"),
    ("anthropic", {"response_format": {"type": "json_object"}}, "response_format"),
    ("gemini", {"user": "end-user-42"}, "user"),
    ("gemini", {"tools": (LOOKUP,), "parallel_tool_calls": False}, "parallel_tool_calls"),
])
async def test_a_parameter_the_primary_cannot_honour_is_refused_before_any_call(
        fake_provider, make_request, vendor, options, param):
    request = make_request(VENDORS[vendor][0], "Hi", **options)
    assert unsupported_params(request, await sync_to_async(model_get)(request.model)) == [param]

    with pytest.raises(errors.InvalidRequest) as raised:
        await collect(stream_chat(request))

    assert param in raised.value.message and raised.value.param == param
    for fake in (fake_provider.openai, fake_provider.anthropic, fake_provider.gemini):
        assert fake.requests == []


def test_unsupported_params_names_each_parameter_a_model_cannot_honour(make_request, settings):
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = "k-0123456789"
    everything = make_request(
        "demo", "Hi", stop=("x",), seed=1, top_p=0.9, user="u", presence_penalty=0.1, frequency_penalty=0.1,
        response_format={"type": "json_object"}, tools=(LOOKUP,), parallel_tool_calls=False,
    )
    assert unsupported_params(everything, model_get("gpt-5.2")) == []
    assert unsupported_params(everything, model_get("demo")) == []
    assert unsupported_params(everything, model_get("claude-sonnet-4-5")) == [
        "response_format", "seed", "presence_penalty", "frequency_penalty"]
    assert unsupported_params(everything, model_get("gemini-3-pro")) == ["user", "parallel_tool_calls"]
    # unset, "text" and parallel_tool_calls=True ask for nothing
    plain = make_request("demo", "Hi", response_format={"type": "text"}, parallel_tool_calls=True, tools=(LOOKUP,))
    assert all(unsupported_params(plain, model_get(alias)) == [] for alias in ("claude-haiku-4-5", "gemini-3-flash"))


def test_models_expose_their_provider_s_features(settings):
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = "k-0123456789"
    for alias, provider in [("gpt-5.2", "openai"), ("claude-haiku-4-5", "anthropic"), ("gemini-3-flash", "gemini"),
                            ("demo", "demo")]:
        info = model_get(alias)
        assert info.features == capabilities.provider_features(provider) | {"tools"}
        assert provider_get(provider).supports == capabilities.provider_features(provider)
    assert model_get("gemini-3-flash").supports("seed") and not model_get("claude-haiku-4-5").supports("seed")
    assert model_get("claude-haiku-4-5").supports(capabilities.JSON_SCHEMA)
    assert not model_get("claude-haiku-4-5").supports(capabilities.JSON_OBJECT)


# --- the chain: `models` restricts it, fallbacks that cannot honour the request are skipped ------------


async def test_models_restricts_the_chain_to_those_aliases(fake_provider, make_request):
    # gpt-5.2-instant's registry fallbacks: claude-haiku-4-5, then gemini-3-flash
    fake_provider.openai.script([overloaded(), overloaded(), overloaded()])
    fake_provider.gemini.script([reply("from ", "gemini")])

    stream = stream_chat(make_request("gpt-5.2-instant", "Hi", models=("gpt-5.2-instant", "gemini-3-flash")))
    events = await collect(stream)

    assert text_of(events) == "from gemini"
    assert fake_provider.anthropic.requests == []  # the registry's first fallback is not allowed: never called
    assert len(fake_provider.openai.requests) == 3 and len(fake_provider.gemini.requests) == 1
    assert stream.model.alias == "gemini-3-flash" and stream.usages[-1].model == "gemini-3-flash"


async def test_models_order_is_the_order_tried_and_unknown_ones_are_skipped(fake_provider, make_request):
    fake_provider.openai.script([overloaded()] * 3)
    fake_provider.gemini.script([overloaded()] * 3)
    fake_provider.anthropic.script([reply("claude")])

    stream = stream_chat(make_request("gpt-5.2-instant", "Hi",
                                      models=("gpt-5.2-instant", "no-such-model", "gemini-2.5-flash", "claude-haiku-4-5")))
    events = await collect(stream)

    assert text_of(events) == "claude" and stream.model.alias == "claude-haiku-4-5"
    assert [r.model for r in fake_provider.gemini.requests] == ["gemini-2.5-flash"] * 3
    assert [r.model for r in fake_provider.anthropic.requests] == ["claude-haiku-4-5"]


async def test_models_with_only_the_primary_means_no_fallback(fake_provider, make_request):
    fake_provider.openai.script([overloaded()] * 3)
    with pytest.raises(errors.Overloaded):
        await collect(stream_chat(make_request("gpt-5.2-instant", "Hi", models=("gpt-5.2-instant",))))
    assert fake_provider.anthropic.requests == [] and fake_provider.gemini.requests == []


async def test_an_unknown_primary_is_unavailable_whatever_models_says(make_request):
    with pytest.raises(errors.ModelUnavailable):
        await collect(stream_chat(make_request("no-such-model", "Hi", models=("no-such-model", "demo"))))


@pytest.mark.parametrize("options", [{"seed": 7}, {"response_format": {"type": "json_object"}},
                                     {"frequency_penalty": 0.3}], ids=["seed", "json_object", "penalty"])
async def test_fallbacks_that_cannot_honour_the_request_are_skipped(fake_provider, make_request, options):
    fake_provider.openai.script([overloaded()] * 3)
    fake_provider.gemini.script([reply("gemini honours it")])

    stream = stream_chat(make_request("gpt-5.2-instant", "Hi", **options))
    events = await collect(stream)

    assert text_of(events) == "gemini honours it" and stream.model.alias == "gemini-3-flash"
    assert fake_provider.anthropic.requests == []  # claude-haiku-4-5 cannot honour it: skipped
    [sent] = fake_provider.gemini.requests
    if "seed" in options:
        assert sent.params["seed"] == 7
    elif "frequency_penalty" in options:
        assert sent.params["frequencyPenalty"] == 0.3
    else:
        assert sent.params["responseMimeType"] == "application/json"


async def test_a_fallback_that_honours_json_schema_is_used(fake_provider, make_request):
    fake_provider.openai.script([overloaded()] * 3)
    fake_provider.anthropic.script([reply('{"city": "Oslo", "population": 700000}')])

    stream = stream_chat(make_request("gpt-5.2-instant", "Hi", response_format=JSON_SCHEMA))
    events = await collect(stream)

    assert json.loads(text_of(events)) == {"city": "Oslo", "population": 700000}
    assert stream.model.alias == "claude-haiku-4-5"
    assert fake_provider.anthropic.last_request.params["output_config"]["format"]["schema"] == SCHEMA


async def test_the_answering_model_is_the_fallback_even_when_it_fails_midway(fake_provider, make_request):
    fake_provider.openai.script([overloaded()] * 3)
    fake_provider.anthropic.script([stream_error("overloaded", after=2)])

    stream = stream_chat(make_request("gpt-5.2-instant", "Hi"))
    with pytest.raises(errors.Overloaded):
        await collect(stream)

    assert stream.model.alias == "claude-haiku-4-5"
    assert fake_provider.gemini.requests == []  # no fallback after the first delta


def test_chain_for_and_serving_chain_are_sync(make_request, settings):
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = "k-0123456789"
    assert [m.alias for m in chain_for("gpt-5.2-instant")] == ["gpt-5.2-instant", "claude-haiku-4-5",
                                                               "gemini-3-flash"]
    assert [m.alias for m in chain_for("gpt-5.2-instant", ("gpt-5.2-instant", "gpt-5.2"))] == [
        "gpt-5.2-instant", "gpt-5.2"]
    assert [m.alias for m in chain_for("gpt-5.2-instant", ())] == ["gpt-5.2-instant"]
    # the primary always comes first, even when `models` forgets or repeats it
    assert [m.alias for m in chain_for("gpt-5.2-instant", ("gemini-3-pro", "gpt-5.2-instant"))] == [
        "gpt-5.2-instant", "gemini-3-pro"]
    seeded = make_request("gpt-5.2-instant", "Hi", seed=3)
    assert [m.alias for m in serving_chain(seeded)] == ["gpt-5.2-instant", "gemini-3-flash"]
    restricted = ChatRequest(model="claude-haiku-4-5", messages=(Message("user", "Hi"),), request_id="r",
                             seed=3, models=("claude-haiku-4-5", "gpt-5.2", "claude-opus-4-5"))
    # the primary is kept (llm.chat refuses it), fallbacks that cannot honour `seed` are not
    assert [m.alias for m in serving_chain(restricted)] == ["claude-haiku-4-5", "gpt-5.2"]
    settings.GEMINI_API_KEY = ""
    with pytest.raises(errors.ModelUnavailable):
        chain_for("gemini-3-flash", ("gemini-3-flash", "gpt-5.2"))
    assert [m.alias for m in chain_for("gpt-5.2", ("gpt-5.2", "gemini-3-pro", "claude-opus-4-5"))] == [
        "gpt-5.2", "claude-opus-4-5"]  # an unconfigured one is skipped


async def test_anthropic_receives_temperature(fake_provider, make_request):
    # anthropic 1.0 took temperature out of create()'s keyword arguments: passing it raised a TypeError
    params = await sent_params(fake_provider, "anthropic", make_request, temperature=0.3)
    assert params["temperature"] == 0.3
