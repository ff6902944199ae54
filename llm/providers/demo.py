"""The built-in demo model: offline, no key, deterministic, streamed at a configurable pace.

Triggers in the last user message:
    /tool NAME {json}   call that tool first, then answer with its result
    /long               a long answer (~400 tokens)
    /fail               stream a few deltas, then fail with ProviderUnavailable
    /echo TEXT          answer exactly TEXT
Anything else gets a short, readable, deterministic answer.

OpenAI parameters, emulated exactly (docs/demo.md): `stop` cuts the answer before the first stop
sequence; response_format json_object answers a JSON object, json_schema a JSON instance valid
against the schema (llm.providers.schema_instance); tool_choice "required" or a tool's name makes it
call a tool (with arguments generated from the tool's schema when the message gives none). It never
calls more than one tool at once, and is deterministic whatever the seed and sampling parameters.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

from llm import conf
from llm.errors import InvalidRequest, ProviderUnavailable
from llm.providers import capabilities
from llm.providers.schema_instance import instance
from llm.types import ChatRequest, Finished, Message, ModelInfo, StreamEvent, TextDelta, ToolCall, ToolSpec, Usage

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


def _forced_tool(request: ChatRequest, offered: dict[str, ToolSpec], trigger: str | None) -> str | None:
    """The tool that tool_choice obliges the model to call ("required": the /tool one, else the first)."""
    choice = request.tool_choice
    if choice in (None, "auto", "none"):
        return None
    if not offered:
        raise InvalidRequest(f"tool_choice “{choice}” needs tools, and none were given.", provider="demo")
    if choice == "required":
        return trigger if trigger in offered else next(iter(offered))
    if choice not in offered:
        raise InvalidRequest(f"tool_choice names “{choice}”, which is not one of the tools.", provider="demo")
    return choice


def _formatted(answer: str, request: ChatRequest) -> str:
    """The answer in the requested response_format: as it is, a JSON object, or a schema's instance."""
    kind = request.response_format_type
    if kind == "json_object":
        try:
            value = json.loads(answer)
        except ValueError:
            value = None
        return answer if isinstance(value, dict) else json.dumps({"answer": answer}, ensure_ascii=False)
    if kind == "json_schema":
        spec = (request.response_format or {}).get("json_schema") or {}
        return json.dumps(instance(request.response_schema, name=str(spec.get("name") or "value")),
                          ensure_ascii=False)
    return answer


def _stopped(answer: str, stop: tuple[str, ...]) -> str:
    """The answer up to (not including) the earliest stop sequence, as a model stops there."""
    cuts = [index for index in (answer.find(s) for s in stop if s) if index >= 0]
    return answer[: min(cuts)] if cuts else answer


class DemoProvider:
    name = "demo"
    supports = capabilities.DEMO

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
        offered = {tool.name: tool for tool in request.tools} if model.supports_tools else {}
        trigger = _TOOL.match(prompt)
        tool_name = _forced_tool(request, offered, trigger.group(1) if trigger else None)
        if tool_name is None and trigger is not None and not tool_results and request.tool_choice != "none" \
                and trigger.group(1) in offered:
            tool_name = trigger.group(1)  # the /tool trigger, when the model may choose

        if tool_name is not None:
            if trigger is not None and trigger.group(1) == tool_name and not tool_results:
                args_text = trigger.group(2).strip()
                try:
                    arguments = json.loads(args_text or "{}")
                    raw = None if isinstance(arguments, dict) else args_text
                except ValueError:
                    arguments, raw = {}, args_text
            else:  # obliged by tool_choice, with no arguments to hand: valid ones, from the tool's schema
                arguments, raw = instance(offered[tool_name].parameters or {"type": "object"}, name=tool_name), None
            tool_call = ToolCall(
                id=f"demo_call_{len(after_user) + 1}",
                name=tool_name,
                arguments=arguments if isinstance(arguments, dict) else {},
                raw_arguments=raw,
            )
            # with a response_format, a call comes without text (as real models answer)
            answer = "" if request.response_format_type else f"Let me use the {tool_name} tool."
        else:
            if tool_results:
                answer = _tool_answer(tool_results)
            elif prompt.startswith("/echo"):
                # exactly the text after "/echo ", from the unstripped message
                raw_text = messages[last].content
                answer = raw_text[raw_text.find("/echo") + len("/echo") :].removeprefix(" ")
            elif prompt.startswith("/long"):
                answer = _long_answer()
            elif prompt.startswith("/fail"):
                answer, fail = "This answer will break off in the middle", True
            elif trigger is not None:
                answer = f"The {trigger.group(1)} tool is not available here, so I cannot call it."
            else:
                answer = _plain_answer(prompt)
            answer = _formatted(answer, request)
        answer = _stopped(answer, request.stop)

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
