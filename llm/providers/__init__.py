"""The adapters, one per provider, each over its vendor's official SDK. Only this package imports them.

`provider_get(name)` maps a registry row's provider to its adapter (imported on first use, so a
server that never calls Gemini never imports google-genai).
"""

from __future__ import annotations

from importlib import import_module

from llm.errors import ModelUnavailable
from llm.types import Provider

ADAPTERS: dict[str, str] = {
    "demo": "llm.providers.demo:DemoProvider",
    "openai": "llm.providers.openai:OpenAIProvider",
    "openai_compatible": "llm.providers.openai:OpenAIProvider",
    "anthropic": "llm.providers.anthropic:AnthropicProvider",
    "gemini": "llm.providers.gemini:GeminiProvider",
}
_instances: dict[str, Provider] = {}


def provider_get(name: str) -> Provider:
    adapter = _instances.get(name)
    if adapter is None:
        path = ADAPTERS.get(name)
        if path is None:
            raise ModelUnavailable(f"No adapter for provider “{name}”.", provider=name)
        module, _, attr = path.partition(":")
        adapter = _instances[name] = getattr(import_module(module), attr)()
    return adapter
