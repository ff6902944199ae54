"""Parley's own types for talking to models. The other apps import only these (and llm.errors).

A chat is a `ChatRequest` in, and an async stream of events out:

    TextDelta   a piece of the answer's text
    ToolCall    the model asks for a tool (arguments already parsed from JSON)
    ToolResult  what a tool answered (only from the tool loop in llm.chat)
    Usage       tokens of one provider call (one per call: a tool loop yields several)
    Finished    the stream is over, with the reason

Errors are raised, never yielded: subclasses of llm.errors.LLMError.
No vendor SDK type crosses this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from uuid import UUID

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    # The raw argument text when it was not valid JSON (arguments is then {}), so the tool loop
    # can answer the model with a clear error instead of crashing.
    raw_arguments: str | None = None
    # Opaque data the provider needs back with this call in the next round of a tool loop
    # (Gemini's thought signature). Opaque: ignored by everything but the adapter that set it.
    provider_data: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    # assistant messages that called tools
    tool_calls: tuple[ToolCall, ...] = ()
    # tool messages: which call this answers, and the tool's name
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass(frozen=True)
class ChatRequest:
    """One turn. The optional fields carry OpenAI chat-completions parameters with OpenAI's meaning.

    Each adapter forwards what it can in its vendor's shape; what a model cannot honour is named by
    `llm.registry.unsupported_params(request, model)`, and llm.chat never sends a request to a model
    that cannot honour it (the primary: InvalidRequest; a fallback: skipped). Unset = None / ().
    """

    model: str  # a registry alias, e.g. "demo", "gpt-5.2-instant"
    messages: tuple[Message, ...]
    request_id: str  # unique per turn; each provider call derives its own id from it
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None  # "auto", "none", "required" or a tool name
    max_output_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (not included)
    # {"type": "text"} | {"type": "json_object"} |
    # {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": bool}}
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    top_p: float | None = None
    user: str | None = None  # the end user's id, as the client gave it (vendors use it against abuse)
    parallel_tool_calls: bool | None = None  # False: at most one tool call per answer
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # the aliases allowed to serve the call, primary first; None: the model and its registry fallbacks
    models: tuple[str, ...] | None = None
    # for the call log only
    organization_id: UUID | None = None
    user_id: UUID | None = None

    @property
    def response_format_type(self) -> str | None:
        """"json_object" / "json_schema", or None when no structured output is asked ("text" or unset)."""
        kind = (self.response_format or {}).get("type")
        return kind if kind in ("json_object", "json_schema") else None

    @property
    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema of a json_schema response_format, else None."""
        if self.response_format_type != "json_schema":
            return None
        schema = (self.response_format.get("json_schema") or {}).get("schema")  # type: ignore[union-attr]
        return schema if isinstance(schema, dict) else {}


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    result: Any  # JSON-serializable
    is_error: bool = False


@dataclass(frozen=True)
class Usage:
    """Tokens of one provider call. input_tokens excludes cached_input_tokens (billed at their own price)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    # which provider call this was (unique; the ledger keys on it) and on which model it ran
    call_id: str = ""
    model: str = ""
    provider: str = ""
    # True when the provider reported nothing and the numbers were counted by Parley
    estimated: bool = False


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled", "error"]


@dataclass(frozen=True)
class Finished:
    reason: FinishReason = "stop"


StreamEvent = TextDelta | ToolCall | ToolResult | Usage | Finished


# What a model can honour, by name (see llm.providers.capabilities for each provider's set):
#   "tools"                        tools and every tool_choice ("auto", "none", "required", a name)
#   "stop" "seed" "top_p" "user" "presence_penalty" "frequency_penalty"   the parameter of that name
#   "parallel_tool_calls"          parallel_tool_calls=False (at most one call) can be enforced
#   "response_format:json_object"  response_format {"type": "json_object"}
#   "response_format:json_schema"  response_format {"type": "json_schema", ...}
Feature = str


@dataclass(frozen=True)
class ModelInfo:
    alias: str
    provider: str
    vendor_model: str
    context_window: int
    max_output_tokens: int
    supports_tools: bool
    fallbacks: tuple[str, ...] = ()
    available: bool = True  # False when the provider has no key configured
    display_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    features: frozenset[Feature] = frozenset()  # what this model can honour (above); "tools" iff supports_tools

    def supports(self, feature: Feature) -> bool:
        return feature in self.features


class Provider(Protocol):
    name: str
    supports: frozenset[Feature]  # the features its models can honour (tools also need the row's flag)

    def stream(self, request: ChatRequest, model: ModelInfo) -> AsyncIterator[StreamEvent]:
        """Yield TextDelta / ToolCall / Usage / Finished for one provider call.

        Raise llm.errors.LLMError subclasses, never an SDK's exception.
        """
        ...
