import asyncio
import sys
import uuid

from django.core.management.base import BaseCommand, CommandError

from llm.chat import stream_chat
from llm.errors import LLMError
from llm.tools import toolset_for_tier
from llm.types import ChatRequest, Finished, Message, TextDelta, ToolCall, ToolResult, Usage


class Command(BaseCommand):
    help = "Stream a model's answer to the terminal: llm_chat --model ALIAS \"prompt\""

    def add_arguments(self, parser) -> None:
        parser.add_argument("prompt")
        parser.add_argument("--model", default="demo", help="A registry alias (see llm_models).")
        parser.add_argument("--system", default="", help="A system prompt.")
        parser.add_argument("--tools", action="store_true", help="Offer the built-in tools (calculator, current_time).")
        parser.add_argument("--max-output-tokens", type=int, default=None)

    def handle(self, *args, **options) -> None:
        messages = []
        if options["system"]:
            messages.append(Message(role="system", content=options["system"]))
        messages.append(Message(role="user", content=options["prompt"]))
        request = ChatRequest(
            model=options["model"],
            messages=tuple(messages),
            request_id=f"cli-{uuid.uuid4()}",
            max_output_tokens=options["max_output_tokens"],
        )
        toolset = toolset_for_tier("enterprise") if options["tools"] else None
        try:
            asyncio.run(self._stream(request, toolset))
        except LLMError as exc:
            raise CommandError(f"{type(exc).__name__}: {exc.message}")

    async def _stream(self, request: ChatRequest, toolset) -> None:
        stream = stream_chat(request, toolset=toolset)
        out = self.stdout
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    out.write(event.text, ending="")
                    out.flush()
                elif isinstance(event, ToolCall):
                    out.write(self.style.NOTICE(f"\n[tool call {event.name} {event.arguments}]"))
                elif isinstance(event, ToolResult):
                    out.write(self.style.NOTICE(f"[tool result {event.result}]"))
                elif isinstance(event, Usage):
                    sys.stderr.write(
                        f"\n[{event.model}: {event.input_tokens} in, {event.output_tokens} out, "
                        f"{event.cached_input_tokens} cached]"
                    )
                elif isinstance(event, Finished):
                    out.write(f"\n[finished: {event.reason}]")
        finally:
            await stream.aclose()
