"""Anthropic Messages, streamed: the system prompt as its own field (cached when long), tool_use blocks.

OpenAI parameters in Anthropic's shape: stop → stop_sequences, top_p, user → metadata.user_id,
parallel_tool_calls=False → tool_choice.disable_parallel_tool_use, response_format json_schema →
output_config.format (structured outputs: the schema as given). No seed, no penalties, no json_object
(llm.providers.capabilities.ANTHROPIC: refused or skipped, never dropped).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2

from llm import conf
from llm.errors import LLMError
from llm.providers import capabilities
from llm.providers.base import (
    classify,
    client_for_loop,
    from_transport,
    http_timeout,
    parse_arguments,
    retry_after_seconds,
)
from llm.types import ChatRequest, Finished, Message, ModelInfo, StreamEvent, TextDelta, ToolCall, Usage

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}


def _system(messages: tuple[Message, ...]) -> str | list[dict[str, Any]] | None:
    text = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    if not text:
        return None
    if len(text) >= conf.cache_min_chars():
        # Prompt caching: the system prompt is the stable prefix of every turn of a conversation.
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
    return text


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:  # tool results of one round share one user turn
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.content}])
            continue
        blocks: list[dict[str, Any]] = []
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        for call in message.tool_calls:
            blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
        if blocks:
            add("assistant" if message.role == "assistant" else "user", blocks)
    return out


def _tool_choice(choice: str | None, parallel_tool_calls: bool | None = None) -> dict[str, Any] | None:
    if choice is None and parallel_tool_calls is not False:
        return None
    if choice in (None, "auto", "none"):
        out: dict[str, Any] = {"type": choice or "auto"}
    elif choice == "required":
        out = {"type": "any"}
    else:
        out = {"type": "tool", "name": choice}
    if parallel_tool_calls is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True  # at most one tool_use block
    return out


class AnthropicProvider:
    name = "anthropic"
    supports = capabilities.ANTHROPIC

    def client(self) -> anthropic.AsyncAnthropic:
        key, base_url = conf.provider_key("anthropic"), conf.provider_base_url("anthropic") or None
        timeout = http_timeout()
        return client_for_loop(
            ("anthropic", key, base_url, repr(timeout)),
            lambda: anthropic.AsyncAnthropic(api_key=key, base_url=base_url, max_retries=0, timeout=timeout),
        )

    def build(self, request: ChatRequest, model: ModelInfo) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": model.vendor_model,
            "messages": _messages(request.messages),
            "max_tokens": request.max_output_tokens or model.max_output_tokens,
            "stream": True,
        }
        system = _system(request.messages)
        if system is not None:
            kwargs["system"] = system
        # anthropic 1.0 took the sampling parameters out of create()'s signature (its migration guide:
        # send them in the body); the API still takes them on the models that have sampling options
        sampling = {name: value for name, value in (("temperature", request.temperature), ("top_p", request.top_p))
                    if value is not None}
        if sampling:
            kwargs["extra_body"] = sampling
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        if request.user is not None:
            kwargs["metadata"] = {"user_id": request.user}
        schema = request.response_schema
        if schema is not None:
            kwargs["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if request.tools and model.supports_tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
            choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
            if choice is not None:
                kwargs["tool_choice"] = choice
        return kwargs

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Every SDK / transport exception becomes an llm.errors.LLMError, here and nowhere else."""
        try:
            yield
        except LLMError:
            raise
        except anthropic.APIStatusError as exc:
            # An `event: error` inside a 200 stream arrives as a status error with status 200.
            status = exc.status_code if exc.status_code != 200 else None
            raise classify(provider=self.name, status=status, kind=exc.type or "", code=exc.error_code or "",
                           message=exc.api_message or exc.message,
                           retry_after=retry_after_seconds(exc.response.headers if status else None),
                           secrets=(conf.provider_key("anthropic"),)) from None
        except anthropic.APIConnectionError as exc:
            raise from_transport(exc.__cause__ or exc, self.name) from None
        except anthropic.APIError as exc:
            raise classify(provider=self.name, status=None, message=exc.message,
                           secrets=(conf.provider_key("anthropic"),)) from None
        except httpx2.HTTPError as exc:
            raise from_transport(exc, self.name) from None
        except (json.JSONDecodeError, anthropic.AnthropicError) as exc:
            raise from_transport(exc, self.name) from None

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[StreamEvent]:
        client = self.client()
        kwargs = self.build(request, model)
        stream = None
        input_tokens = cached = cache_written = output_tokens = 0
        usage_seen = False
        finish = "stop"
        tools: dict[int, list[Any]] = {}  # block index → [id, name, json parts]
        try:
            with self.errors():
                stream = await client.messages.create(**kwargs)
                async for event in stream:
                    kind = event.type
                    if kind == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta":
                            if delta.text:
                                yield TextDelta(delta.text)
                        elif delta.type == "input_json_delta":
                            slot = tools.get(event.index)
                            if slot is not None:
                                slot[2].append(delta.partial_json)
                    elif kind == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            tools[event.index] = [block.id, block.name, []]
                    elif kind == "message_start":
                        usage = event.message.usage
                        input_tokens = usage.input_tokens or 0
                        cached = getattr(usage, "cache_read_input_tokens", None) or 0
                        cache_written = getattr(usage, "cache_creation_input_tokens", None) or 0
                        output_tokens = usage.output_tokens or 0
                    elif kind == "message_delta":
                        if event.delta.stop_reason:
                            finish = _FINISH.get(event.delta.stop_reason, "stop")
                        usage = getattr(event, "usage", None)
                        if usage is not None:
                            usage_seen = True
                            # cumulative counts: the last one is the total, never add them up
                            if usage.output_tokens is not None:
                                output_tokens = usage.output_tokens
                            if getattr(usage, "input_tokens", None):
                                input_tokens = usage.input_tokens
                            if getattr(usage, "cache_read_input_tokens", None):
                                cached = usage.cache_read_input_tokens
        finally:
            if stream is not None:
                await stream.close()
        for index in sorted(tools):
            call_id, name, parts = tools[index]
            arguments, raw = parse_arguments("".join(parts))
            yield ToolCall(id=call_id, name=name, arguments=arguments, raw_arguments=raw)
        if usage_seen:
            # cache writes are billed as input (at a premium the price table may not know)
            yield Usage(input_tokens=input_tokens + cache_written, output_tokens=output_tokens,
                        cached_input_tokens=cached)
        yield Finished("tool_calls" if tools else finish)  # type: ignore[arg-type]
