"""Gemini through google-genai (streaming, function calling). google-generativeai is ended: not used.

OpenAI parameters in generationConfig: stop → stop_sequences, seed, top_p, presence/frequency_penalty,
response_format json_object → response_mime_type application/json, json_schema → the same with
response_json_schema (the JSON schema as given). No end-user id, no parallel_tool_calls switch
(llm.providers.capabilities.GEMINI: refused or skipped, never dropped).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from llm import conf, errors
from llm.errors import LLMError
from llm.providers import capabilities
from llm.providers.base import (
    classify,
    client_for_loop,
    from_transport,
    http_timeout,
    parse_arguments,
    redact,
    retry_after_seconds,
)
from llm.types import ChatRequest, Finished, Message, ModelInfo, StreamEvent, TextDelta, ToolCall, Usage

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
           "PROHIBITED_CONTENT": "content_filter", "BLOCKLIST": "content_filter", "SPII": "content_filter",
           "IMAGE_SAFETY": "content_filter", "MALFORMED_FUNCTION_CALL": "stop"}
_DELAY = re.compile(r"^([0-9.]+)s$")


def _tool_response(content: str) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except ValueError:
        return {"result": content}
    if isinstance(value, dict) and "error" in value and len(value) == 1:
        return {"error": value["error"]}
    return value if isinstance(value, dict) else {"result": value}


def _contents(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})

    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            part: dict[str, Any] = {"name": message.name or "", "response": _tool_response(message.content)}
            if message.tool_call_id and not message.tool_call_id.startswith("gemini_"):
                part["id"] = message.tool_call_id
            add("user", [{"function_response": part}])
            continue
        parts: list[dict[str, Any]] = []
        if message.content:
            parts.append({"text": message.content})
        for call in message.tool_calls:
            function_call: dict[str, Any] = {"name": call.name, "args": call.arguments}
            if not call.id.startswith("gemini_"):
                function_call["id"] = call.id
            entry: dict[str, Any] = {"function_call": function_call}
            signature = (call.provider_data or {}).get("thought_signature")
            if signature:
                entry["thought_signature"] = signature
            parts.append(entry)
        if parts:
            add("model" if message.role == "assistant" else "user", parts)
    return out


def _tool_config(choice: str | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"function_calling_config": {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}}
    return {"function_calling_config": {"mode": "ANY", "allowed_function_names": [choice]}}


def _retry_delay(details: Any) -> float | None:
    """Gemini's RetryInfo detail (`"retryDelay": "38s"`)."""
    body = details.get("error", details) if isinstance(details, dict) else {}
    for item in body.get("details") or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _quota_ids(details: Any) -> str:
    body = details.get("error", details) if isinstance(details, dict) else {}
    ids = []
    for item in body.get("details") or []:
        if isinstance(item, dict):
            ids += [str(v.get("quotaId", "")) for v in item.get("violations") or [] if isinstance(v, dict)]
            if item.get("reason"):
                ids.append(str(item["reason"]))
    return " ".join(ids)


# google-genai streams through several nested generators that an early stop does not close, which would
# leave the connection open (the provider generating on). A response hook finds each call's httpx response
# by a request header, so the adapter can close the connection itself.
_CALL_HEADER = "x-parley-call"
_open_responses: dict[str, httpx2.Response] = {}


async def _remember_response(response: httpx2.Response) -> None:
    call = response.request.headers.get(_CALL_HEADER)
    if call:
        _open_responses[call] = response


class GeminiProvider:
    name = "gemini"
    supports = capabilities.GEMINI

    def client(self) -> genai.Client:
        key, base_url = conf.provider_key("gemini"), conf.provider_base_url("gemini") or None
        timeout = http_timeout()

        def make() -> genai.Client:
            options = genai_types.HttpOptions(
                base_url=base_url,
                timeout=int(max(timeout.read or 0, timeout.connect or 0) * 1000),
                retry_options=genai_types.HttpRetryOptions(attempts=1),  # Parley's own retry policy only
                # httpx, not aiohttp (which google-genai prefers when installed, and the openai SDK's
                # aiohttp extra installs): this adapter closes upstream streams and maps errors through httpx.
                async_client_args={"event_hooks": {"response": [_remember_response]}, "transport": httpx2.AsyncHTTPTransport()},
            )
            return genai.Client(api_key=key, http_options=options)

        # The Client must stay referenced while streaming (its pool closes with it): cached per loop.
        return client_for_loop(("gemini", key, base_url, repr(timeout)), make)

    def build(self, request: ChatRequest, model: ModelInfo) -> dict[str, Any]:
        config: dict[str, Any] = {"automatic_function_calling": {"disable": True}}
        system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
        if system:
            config["system_instruction"] = system
        if request.max_output_tokens:
            config["max_output_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.stop:
            config["stop_sequences"] = list(request.stop)
        for name in ("seed", "top_p", "presence_penalty", "frequency_penalty"):
            value = getattr(request, name)
            if value is not None:
                config[name] = value
        if request.response_format_type is not None:
            config["response_mime_type"] = "application/json"
            schema = request.response_schema
            if schema is not None:
                config["response_json_schema"] = schema
        if request.tools and model.supports_tools:
            config["tools"] = [{"function_declarations": [
                {"name": t.name, "description": t.description, "parameters_json_schema": t.parameters}
                for t in request.tools
            ]}]
            tool_config = _tool_config(request.tool_choice)
            if tool_config is not None:
                config["tool_config"] = tool_config
        config["http_options"] = {"headers": {_CALL_HEADER: uuid.uuid4().hex}}
        return {"model": model.vendor_model, "contents": _contents(request.messages), "config": config}

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Every SDK / transport exception becomes an llm.errors.LLMError, here and nowhere else."""
        key = conf.provider_key("gemini")
        try:
            yield
        except LLMError:
            raise
        except genai_errors.APIError as exc:
            details = getattr(exc, "details", None)
            retry_after = _retry_delay(details)
            response = getattr(exc, "response", None)
            if retry_after is None and response is not None and hasattr(response, "headers"):
                retry_after = retry_after_seconds(response.headers)
            quota = _quota_ids(details)
            status_name = exc.status or ""
            if exc.code == 429:
                message = redact(exc.message or "", key)
                # Google calls every 429 a quota: per-day quotas and billing limits cannot be waited out
                if "PerDay" in quota or "billing" in message.lower() or (
                    retry_after is None and "exceeded your current quota" in message
                ):
                    raise errors.QuotaExceeded(message, provider=self.name, status=429) from None
                raise errors.RateLimited(message, retry_after=retry_after, provider=self.name, status=429) from None
            raise classify(provider=self.name, status=exc.code, kind=status_name, code=quota,
                           message=exc.message or "", retry_after=retry_after, secrets=(key,)) from None
        except httpx2.HTTPError as exc:
            raise from_transport(exc, self.name) from None
        except (genai_errors.UnknownApiResponseError, json.JSONDecodeError) as exc:
            raise from_transport(exc, self.name) from None

    async def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[StreamEvent]:
        client = self.client()
        kwargs = self.build(request, model)
        stream = None
        usage = None
        finish = "stop"
        calls: list[ToolCall] = []
        call_key = kwargs["config"]["http_options"]["headers"][_CALL_HEADER]
        try:
            with self.errors():
                stream = await client.aio.models.generate_content_stream(**kwargs)
                async for response in stream:
                    if response.usage_metadata is not None:
                        usage = response.usage_metadata
                    candidates = response.candidates
                    if not candidates:
                        continue
                    candidate = candidates[0]
                    content = candidate.content
                    if content is not None and content.parts:
                        for part in content.parts:
                            if part.text and not part.thought:
                                yield TextDelta(part.text)
                            elif part.function_call is not None:
                                fc = part.function_call
                                arguments, raw = parse_arguments(json.dumps(fc.args or {}))
                                data = None
                                if part.thought_signature:  # Gemini 3 wants it back with the call
                                    data = {"thought_signature": part.thought_signature}
                                calls.append(ToolCall(id=fc.id or f"gemini_{len(calls) + 1}", name=fc.name or "",
                                                      arguments=arguments, raw_arguments=raw, provider_data=data))
                    if candidate.finish_reason is not None:
                        reason = getattr(candidate.finish_reason, "value", str(candidate.finish_reason))
                        finish = _FINISH.get(reason, "stop")
        finally:
            response = _open_responses.pop(call_key, None)
            if response is not None:
                await response.aclose()
            if stream is not None and hasattr(stream, "aclose"):
                await stream.aclose()
        for call in calls:
            yield call
        if usage is not None and (usage.prompt_token_count is not None or usage.candidates_token_count is not None):
            cached = usage.cached_content_token_count or 0
            yield Usage(
                input_tokens=max(0, (usage.prompt_token_count or 0) - cached),
                output_tokens=(usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0),
                cached_input_tokens=cached,
            )
        yield Finished("tool_calls" if calls else finish)  # type: ignore[arg-type]
