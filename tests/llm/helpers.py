"""Helpers shared by the llm tests."""

from llm.types import TextDelta

# vendor → (alias on that vendor, its first seeded fallback, the fallback's vendor)
VENDORS = {
    "openai": ("gpt-5.2-instant", "claude-haiku-4-5", "anthropic"),
    "anthropic": ("claude-haiku-4-5", "gpt-5.2-instant", "openai"),
    "gemini": ("gemini-3-flash", "gemini-2.5-flash", "gemini"),
}



async def collect(stream) -> list:
    events = []
    async for event in stream:
        events.append(event)
    return events


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))
