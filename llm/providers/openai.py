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
from llm.providers import capabilities
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
    supports = capabilities.OPENAI

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
            # aiohttp as the HTTP transport (the SDK's `aiohttp` extra): it relays a stream's chunks
            # with much less work per chunk than the default one, which dominated the relay's cost.
            lambda: openai.AsyncOpenAI(
                api_key=key, base_url=base_url, max_retries=0, timeout=timeout,
                http_client=openai.DefaultAioHttpClient(timeout=timeout),
            ),
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
        # the OpenAI parameters, as they are: this is their own API
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.response_format_type is not None:
            kwargs["response_format"] = request.response_format
        for name in ("seed", "top_p", "user", "presence_penalty", "frequency_penalty"):
            value = getattr(request, name)
            if value is not None:
                kwargs[name] = value
        if request.tools and model.supports_tools:
            kwargs["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
            if request.tool_choice:
                kwargs["tool_choice"] = _tool_choice(request.tool_choice)
            if request.parallel_tool_calls is not None:  # OpenAI refuses it without tools
                kwargs["parallel_tool_calls"] = request.parallel_tool_calls
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
        usage: dict | None = None
        finish = "stop"
        calls: dict[int, list[Any]] = {}  # index → [id, name, argument parts]
        with self.errors(model):
            # The SDK sends the request (auth, headers, retries policy, status errors) and hands back
            # the raw streaming response, whose chunks are read as plain JSON: building the SDK's
            # typed request and a typed object for every chunk cost more than the rest of the relay.
            response = await client.post("/chat/completions", body=kwargs, cast_to=httpx2.Response, stream=True)
            try:
                async for chunk in _chunks(response):
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    choices = chunk.get("choices")
                    if not choices:  # the last chunk with include_usage has no choices
                        continue
                    choice = choices[0]
                    delta = choice.get("delta")
                    if delta:
                        if delta.get("content"):
                            yield TextDelta(delta["content"])
                        for part in delta.get("tool_calls") or ():
                            slot = calls.setdefault(part.get("index", 0), ["", "", []])
                            if part.get("id"):
                                slot[0] = part["id"]
                            function = part.get("function") or {}
                            if function.get("name"):
                                slot[1] += function["name"]
                            if function.get("arguments"):
                                slot[2].append(function["arguments"])
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], "stop")
            finally:
                await response.aclose()
        for index in sorted(calls):
            call_id, name, parts = calls[index]
            arguments, raw = parse_arguments("".join(parts))
            yield ToolCall(id=call_id or f"call_{index}", name=name, arguments=arguments, raw_arguments=raw)
        if calls:
            finish = "tool_calls"
        if usage is not None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            yield Usage(input_tokens=max(0, (usage.get("prompt_tokens") or 0) - cached),
                        output_tokens=usage.get("completion_tokens") or 0, cached_input_tokens=cached)
        yield Finished(finish)


async def _chunks(response: Any) -> AsyncIterator[dict]:
    """The JSON objects of a chat-completions event stream, up to `data: [DONE]`.

    An error object inside the stream raises openai.APIError, as the SDK's own stream does.
    """
    async for payload in _event_data(response):
        if payload.startswith("[DONE]"):
            return
        chunk = json.loads(payload)
        if not isinstance(chunk, dict):
            continue
        error = chunk.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(message or "An error occurred during streaming", response.request, body=error)
        yield chunk


async def _event_data(response: Any) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined), other fields skipped."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:  # a blank line ends the event
            yield "\n".join(data)
            data = []
    if data:
        yield "\n".join(data)


def _retry_after(response: httpx2.Response | None) -> float | None:
    return retry_after_seconds(response.headers if response is not None else None)
