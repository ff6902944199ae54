"""What each provider's adapter can honour, without importing any SDK (the registry reads it).

The names are those of llm.types.Feature. An adapter's `supports` is its entry here; "tools" is
granted per model on top (the registry row's `supports_tools`). A parameter missing from a set is
never dropped silently: llm.registry.unsupported_params names it, the entry points refuse it when the
primary model cannot honour it, and llm.chat skips the fallbacks that cannot.
"""

from __future__ import annotations

from llm.types import Feature

JSON_OBJECT: Feature = "response_format:json_object"
JSON_SCHEMA: Feature = "response_format:json_schema"

# OpenAI Chat Completions takes every parameter as it is. OpenAI-compatible servers (vLLM, Ollama,
# llama.cpp) get them in the same shape; a server that does not know one answers a 400 itself.
OPENAI: frozenset[Feature] = frozenset({
    "stop", JSON_OBJECT, JSON_SCHEMA, "seed", "top_p", "user", "parallel_tool_calls",
    "presence_penalty", "frequency_penalty",
})

# Anthropic Messages: stop_sequences, top_p, metadata.user_id, tool_choice.disable_parallel_tool_use,
# and structured outputs (output_config.format, a JSON schema). No seed, no penalties; "any JSON
# object" has no schema Anthropic accepts (its objects must close additionalProperties), so
# json_object is refused rather than approximated.
ANTHROPIC: frozenset[Feature] = frozenset({"stop", JSON_SCHEMA, "top_p", "user", "parallel_tool_calls"})

# Gemini generationConfig: stopSequences, seed, topP, presence/frequencyPenalty, responseMimeType
# application/json (json_object) with responseJsonSchema (json_schema). No end-user id, and no way
# to forbid parallel function calls.
GEMINI: frozenset[Feature] = frozenset({
    "stop", JSON_OBJECT, JSON_SCHEMA, "seed", "top_p", "presence_penalty", "frequency_penalty",
})

# The built-in demo (docs/demo.md): stop and both response formats are emulated exactly; it is
# deterministic (any seed gives the same answer, as a seed promises), has no sampling for top_p or
# the penalties to change, keeps no per-user state, and never calls more than one tool at a time.
DEMO: frozenset[Feature] = frozenset({
    "stop", JSON_OBJECT, JSON_SCHEMA, "seed", "top_p", "user", "parallel_tool_calls",
    "presence_penalty", "frequency_penalty",
})

BY_PROVIDER: dict[str, frozenset[Feature]] = {
    "demo": DEMO,
    "openai": OPENAI,
    "openai_compatible": OPENAI,
    "anthropic": ANTHROPIC,
    "gemini": GEMINI,
}


def provider_features(provider: str) -> frozenset[Feature]:
    """The features of a provider's adapter (empty for an unknown provider: it honours nothing extra)."""
    return BY_PROVIDER.get(provider, frozenset())
