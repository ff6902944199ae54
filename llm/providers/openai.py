"""OpenAI Chat Completions (streamed, with usage), also for OpenAI-compatible servers (vLLM, Ollama…)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai

from llm import conf
from llm.errors import LLMError
from llm.providers.base import (
    classify,
    client_for_loop,
    dumps_arguments,
    from_transport,
    http_timeout,
    parse_arguments,
    retry_after_seconds,
)
from llm.types import ChatRequest, Finished, Message, ModelInfo, StreamEvent, TextDelta, ToolCall, Usage

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
           "content_filter": "content_filter"}


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": dumps_arguments(call.arguments, call.raw_arguments)}}
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


def _tool_choice(choice: str | None) -> Any:
    if choice in (None, "auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


class OpenAIProvider:
    """Serves both `openai` and `openai_compatible` rows (base URL and key env from the row)."""

    name = "openai"

    def _settings(self, model: ModelInfo) -> tuple[str, str | None]:
        if model.provider == "openai_compatible":
            key = conf.provider_key("openai_compatible", model.extra.get("api_key_env", "")) or "not-needed"
            return key, model.extra.get("base_url") or None
        return conf.provider_key("openai"), conf.provider_base_url("openai") or None

    def client(self, model: ModelInfo) -> openai.AsyncOpenAI:
        key, base_url = self._settings(model)
        timeout = http_timeout()
        return client_for_loop(
            ("openai", key, base_url, repr(timeout)),
            lambda: openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout),
        )

    def build(self, request: ChatRequest, model: ModelInfo) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": model.vendor_model,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_output_tokens:
            # compatible servers (vLLM, Ollama, llama.cpp) know max_tokens; OpenAI's newer models need the new name
            key = "max_tokens" if model.provider == "openai_compatible" else "max_completion_tokens"
            kwargs[key] = request.max_output_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools and model.supports_tools:
            kwargs["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
            if request.tool_choice:
                kwargs["tool_choice"] = _tool_choice(request.tool_choice)
        return kwargs

    @contextmanager
    def errors(self, model: ModelInfo) -> Iterator[None]:
        """Every SDK / transport exception becomes an llm.errors.LLMError, here and nowhere else."""
        provider = model.provider
        try:
            yield
        except LLMError:
            raise
        except openai.APIStatusError as exc:
            raise classify(provider=provider, status=exc.status_code, kind=exc.type or "", code=exc.code or "",
                           message=exc.message, retry_after=_retry_after(exc.response),
                           secrets=(self._settings(model)[0],)) from None
        except openai.APIConnectionError as exc:
            raise from_transport(exc.__cause__ or exc, provider) from None
        except openai.APIError as exc:  # an error object inside a 200 stream
            raise classify(provider=provider, status=None, kind=exc.type or "", code=exc.code or "",
                           message=exc.message, secrets=(self._settings(model)[0],)) from None
        except httpx2.HTTPError as exc:
            raise from_transport(exc, provider) from None
        except (json.JSONDecodeError, openai.OpenAIError) as exc:
            raise from_transport(exc, provider) from None

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[StreamEvent]:
        client = self.client(model)
        kwargs = self.build(request, model)
        stream = None
        try:
            with self.errors(model):
                stream = await client.chat.completions.create(**kwargs)
                usage = None
                finish = "stop"
                calls: dict[int, list[Any]] = {}  # index → [id, name, argument parts]
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if not chunk.choices:  # the last chunk with include_usage has no choices
                        continue
                    choice = chunk.choices[0]
                    delta = choice.delta
                    if delta is not None:
                        if delta.content:
                            yield TextDelta(delta.content)
                        if delta.tool_calls:
                            for part in delta.tool_calls:
                                slot = calls.setdefault(part.index, ["", "", []])
                                if part.id:
                                    slot[0] = part.id
                                if part.function is not None:
                                    if part.function.name:
                                        slot[1] += part.function.name
                                    if part.function.arguments:
                                        slot[2].append(part.function.arguments)
                    if choice.finish_reason:
                        finish = _FINISH.get(choice.finish_reason, "stop")
        finally:
            if stream is not None:
                await stream.close()
        for index in sorted(calls):
            call_id, name, parts = calls[index]
            arguments, raw = parse_arguments("".join(parts))
            yield ToolCall(id=call_id or f"call_{index}", name=name, arguments=arguments, raw_arguments=raw)
        if calls:
            finish = "tool_calls"
        if usage is not None:
            cached = 0
            details = getattr(usage, "prompt_tokens_details", None)
            if details is not None and getattr(details, "cached_tokens", None):
                cached = details.cached_tokens
            yield Usage(input_tokens=max(0, (usage.prompt_tokens or 0) - cached),
                        output_tokens=usage.completion_tokens or 0, cached_input_tokens=cached)
        yield Finished(finish)


def _retry_after(response: httpx2.Response | None) -> float | None:
    return retry_after_seconds(response.headers if response is not None else None)
