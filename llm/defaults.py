"""The built-in model list: seeded into ModelConfig by migration 0002, and used as-is while the table is
empty (a fresh database before migrating data, or tests that flush tables)."""

from __future__ import annotations

from llm.models import ModelConfig

# alias, display name, provider, vendor model id, context window, most output tokens, tools, fallbacks
DEFAULT_MODELS: list[tuple[str, str, str, str, int, int, bool, list[str]]] = [
    ("demo", "Demo (built in, offline)", "demo", "parley-demo", 32_768, 4_096, True, []),
    ("gpt-5.2-instant", "GPT-5.2 Instant", "openai", "gpt-5.2-chat-latest", 128_000, 16_384, True,
     ["claude-haiku-4-5", "gemini-3-flash"]),
    ("gpt-5.2", "GPT-5.2", "openai", "gpt-5.2", 400_000, 128_000, True, ["claude-sonnet-4-5", "gemini-3-pro"]),
    ("claude-haiku-4-5", "Claude Haiku 4.5", "anthropic", "claude-haiku-4-5", 200_000, 64_000, True,
     ["gpt-5.2-instant", "gemini-3-flash"]),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", "anthropic", "claude-sonnet-4-5", 200_000, 64_000, True,
     ["gpt-5.2", "gemini-3-pro"]),
    ("claude-opus-4-5", "Claude Opus 4.5", "anthropic", "claude-opus-4-5", 200_000, 64_000, True,
     ["claude-sonnet-4-5", "gpt-5.2"]),
    ("gemini-3-flash", "Gemini 3 Flash", "gemini", "gemini-3-flash-preview", 1_048_576, 65_536, True,
     ["gemini-2.5-flash", "gpt-5.2-instant"]),
    ("gemini-3-pro", "Gemini 3 Pro", "gemini", "gemini-3-pro-preview", 1_048_576, 65_536, True,
     ["claude-sonnet-4-5", "gpt-5.2"]),
    ("gemini-2.5-flash", "Gemini 2.5 Flash", "gemini", "gemini-2.5-flash", 1_048_576, 65_536, True,
     ["gemini-3-flash", "gpt-5.2-instant"]),
]


def default_rows() -> list[ModelConfig]:
    """Unsaved ModelConfig rows of the defaults."""
    return [
        ModelConfig(alias=alias, display_name=name, provider=provider, vendor_model=vendor, context_window=window,
                    max_output_tokens=output, supports_tools=tools, fallbacks=list(fallbacks), position=i * 10)
        for i, (alias, name, provider, vendor, window, output, tools, fallbacks) in enumerate(DEFAULT_MODELS)
    ]
