"""The built-in demo model: offline, no key, deterministic, streamed at a configurable pace.

Triggers in the last user message:
    /tool NAME {json}   call that tool first, then answer with its result
    /long               a long answer (~400 tokens)
    /fail               stream a few deltas, then fail with ProviderUnavailable
    /echo TEXT          answer exactly TEXT
Anything else gets a short, readable, deterministic answer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

from llm import conf
from llm.errors import ProviderUnavailable
from llm.types import ChatRequest, Finished, Message, ModelInfo, StreamEvent, TextDelta, ToolCall, Usage

_PIECES = re.compile(r"\s*\S+|\s+")
_TOOL = re.compile(r"^/tool\s+([A-Za-z0-9_\-]+)\s*(.*)$", re.DOTALL)

_LONG_SENTENCES = [
    "Parley keeps every conversation inside its organization, so one tenant never sees another's messages.",
    "Each answer streams token by token over a websocket, and the partial text is saved while it arrives.",
    "Before a turn starts, the worst-case cost is reserved against every budget that applies.",
    "When the answer is complete, the real usage is settled in the ledger and the unused reservation is released.",
    "Retries and fallbacks happen only before the first token reaches you; after that a failure keeps the partial text.",
    "Tools such as the calculator let a model compute exactly instead of guessing.",
    "Every provider call is written to a call log with its timing, its tokens and how it ended.",
    "The same chat turn serves the web page, the REST API and the OpenAI-compatible endpoint.",
]


def _pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly `text`."""
    return _PIECES.findall(text)


def _last_user_index(messages: tuple[Message, ...]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return -1


def _plain_answer(prompt: str) -> str:
    words = prompt.split()
    if not words:
        return "Hello! I am Parley's built-in demo model. Ask me anything."
    opening = " ".join(words[:8]) + ("…" if len(words) > 8 else "")
    return (
        f"Hello! I am Parley's built-in demo model, so I run offline and need no API key. "
        f"You wrote {len(words)} word{'s' if len(words) != 1 else ''}, starting with “{opening}”. "
        "With a provider key configured, a real model would answer here. "
        "Try /long for a long answer, /echo followed by text to hear it back, "
        'or /tool calculator {"expression": "6*7"} to watch a tool call.'
    )


def _long_answer() -> str:
    paragraphs = []
    for n in range(1, 7):
        sentences = [_LONG_SENTENCES[(n + i) % len(_LONG_SENTENCES)] for i in range(3)]
        paragraphs.append(f"{n}. " + " ".join(sentences))
    return "Here is a longer answer from the demo model.\n\n" + "\n\n".join(paragraphs)


def _tool_answer(results: list[Message]) -> str:
    parts = []
    for result in results:
        try:
            value = json.loads(result.content)
        except ValueError:
            value = result.content
        if isinstance(value, dict) and "error" in value:
            parts.append(f"The {result.name or 'tool'} tool reported an error: {value['error']}")
        elif isinstance(value, dict) and "result" in value:
            parts.append(f"The {result.name or 'tool'} tool says {value.get('expression', 'the answer')} = {value['result']}.")
        elif isinstance(value, dict) and "iso" in value:
            parts.append(f"It is {value['iso']} ({value.get('weekday', '')}) in {value.get('timezone', 'UTC')}.")
        else:
            parts.append(f"The {result.name or 'tool'} tool answered: {result.content}")
    return " ".join(parts)


class DemoProvider:
    name = "demo"

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[StreamEvent]:
        from llm.tokens import count_messages, count_text

        messages = request.messages
        last = _last_user_index(messages)
        prompt = messages[last].content.strip() if last >= 0 else ""
        after_user = messages[last + 1 :] if last >= 0 else ()
        tool_results = [m for m in after_user if m.role == "tool"]
        input_tokens = count_messages(messages)
        fail = False
        tool_call: ToolCall | None = None

        if tool_results:
            answer = _tool_answer(tool_results)
        elif prompt.startswith("/echo"):
            # exactly the text after "/echo ", from the unstripped message
            raw = messages[last].content
            answer = raw[raw.find("/echo") + len("/echo") :].removeprefix(" ")
        elif prompt.startswith("/long"):
            answer = _long_answer()
        elif prompt.startswith("/fail"):
            answer, fail = "This answer will break off in the middle", True
        elif (match := _TOOL.match(prompt)) is not None:
            name, args_text = match.group(1), match.group(2).strip()
            offered = {tool.name for tool in request.tools}
            if name in offered and request.tool_choice != "none" and model.supports_tools:
                try:
                    arguments = json.loads(args_text or "{}")
                    raw = None if isinstance(arguments, dict) else args_text
                except ValueError:
                    arguments, raw = {}, args_text
                tool_call = ToolCall(
                    id=f"demo_call_{len(after_user) + 1}",
                    name=name,
                    arguments=arguments if isinstance(arguments, dict) else {},
                    raw_arguments=raw,
                )
                answer = f"Let me use the {name} tool."
            else:
                answer = f"The {name} tool is not available here, so I cannot call it."
        else:
            answer = _plain_answer(prompt)

        delay = conf.demo_token_delay()
        limit = request.max_output_tokens or model.max_output_tokens
        sent, finish = 0, "stop"
        for index, piece in enumerate(_pieces(answer)):
            if index >= limit:
                finish = "length"
                break
            if delay > 0:
                await asyncio.sleep(delay)
            elif index % 64 == 63:
                await asyncio.sleep(0)  # stay cancellable
            yield TextDelta(piece)
            sent += 1
            if fail and sent >= 4:
                raise ProviderUnavailable("The demo model failed on purpose (/fail).", provider="demo")
        if tool_call is not None and finish == "stop":
            yield tool_call
            finish = "tool_calls"
        output_tokens = count_text(answer) if finish == "stop" or tool_call else sent
        if tool_call is not None:
            output_tokens += count_text(json.dumps(tool_call.arguments))
        yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finished(finish)
