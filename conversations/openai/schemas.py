"""The body of `POST /v1/chat/completions`, declared as pydantic models and validated from the raw bytes.

`chat_body_parse(raw)` is the one way in. It never raises anything but a `ParleyError` whose `param`
names the field, so a body of any shape answers an OpenAI error object, never a 500:

- the bytes are parsed by pydantic's JSON parser (jiter): non-UTF-8 bytes, lone surrogates
  (`"\\ud800"`), trailing data and nesting deeper than 200 levels are refused as invalid JSON, without
  recursion in Python;
- every field is strict (`"max_tokens": "5"` and `"stream": 1` are refused, as OpenAI refuses them);
- every known OpenAI parameter is either declared here with its meaning (forwarded to the model, or
  used by Parley itself) or refused with code `unsupported_parameter` naming it (`logprobs: true`,
  `n > 1`, `logit_bias`, `audio`, legacy `functions` …); its default value (`logprobs: false`,
  `n: 1`, `store: false`, `null`) is accepted, since it asks for nothing;
- an unknown top-level parameter is refused with code `unknown_parameter`, as OpenAI itself refuses
  an unrecognized argument: a misspelt `max_token` must not pass as if it were honoured.

Whether the chosen *model* can honour a forwarded parameter (a `response_format` on a model without
structured output, for example) is the llm layer's to say; the engine refuses it in `turn_prepare`.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from config.errors import ParleyError
from llm.types import Message as LLMMessage
from llm.types import ToolCall, ToolSpec

# The largest body /v1/chat/completions reads (bytes). Larger ones answer 413 payload_too_large.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_MESSAGES = 2_000
MAX_TOOLS = 128  # as OpenAI
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_INT = 2**63 - 1  # seed is an int64 at OpenAI; no count Parley keeps is larger

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)
# Parts of an earlier answer that a client sends back as they came (the SDK's `model_dump()` of an
# assistant message): known keys are declared; unknown ones are refused like everywhere else.

_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the whole name (fullmatch)


def _refused(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message)


def _invalid(param: str, message: str) -> ParleyError:
    return ParleyError(message, code="invalid_value", param=param)


def _tagged(choose, *, expected: str, key: str | None = None):
    """A discriminated union whose tags start with `~` (dropped from error locations) and whose
    failure reads `expected …`; `key` is the member's field that chooses (its error names it)."""
    kind = f"invalid_tag:{key}" if key else "invalid_type"
    return Discriminator(choose, custom_error_type=kind, custom_error_message=f"expected {expected}")


def _str_or_list(value: Any) -> str | None:
    if isinstance(value, str):
        return "~str"
    if isinstance(value, list):
        return "~list"
    return None


def _by_type(*tags: str):
    def choose(value: Any) -> str | None:
        if isinstance(value, BaseModel):  # re-validation of a built model
            value = {"type": getattr(value, "type", None)}
        if not isinstance(value, dict):
            return "~object"
        kind = value.get("type")
        return f"~{kind}" if isinstance(kind, str) and kind in tags else None

    return choose


# The member a non-object falls to, so that it is refused as "should be an object" at its own place.
NotObject = Annotated[dict[str, Any], Tag("~object")]


# --- content parts ---------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text", "input_text"]
    text: str


class RefusalPart(BaseModel):
    """An earlier answer's refusal, sent back in an assistant message: it is part of its text."""

    model_config = _STRICT
    type: Literal["refusal"]
    refusal: str


class MediaPart(BaseModel):
    """Images, audio and files: refused (Parley's models read text)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    type: Literal["image_url", "input_audio", "file"]

    @model_validator(mode="after")
    def _refuse(self) -> MediaPart:
        raise _refused(f"Content parts of type `{self.type}` are not supported: Parley's models read text only.")


_USER_PART_TAGS = ("text", "input_text", "image_url", "input_audio", "file")
UserPart = Annotated[
    Annotated[TextPart, Tag("~text")] | Annotated[TextPart, Tag("~input_text")]
    | Annotated[MediaPart, Tag("~image_url")] | Annotated[MediaPart, Tag("~input_audio")]
    | Annotated[MediaPart, Tag("~file")] | NotObject,
    _tagged(_by_type(*_USER_PART_TAGS), expected="a content part of type text, image_url, input_audio or file", key="type"),
]  # fmt: skip
AssistantPart = Annotated[
    Annotated[TextPart, Tag("~text")] | Annotated[RefusalPart, Tag("~refusal")] | NotObject,
    _tagged(_by_type("text", "refusal"), expected="a content part of type text or refusal", key="type"),
]
TextOnlyPart = Annotated[
    Annotated[TextPart, Tag("~text")] | Annotated[TextPart, Tag("~input_text")] | NotObject,
    _tagged(_by_type("text", "input_text"), expected="a content part of type text", key="type"),
]

TextContent = Annotated[
    Annotated[str, Tag("~str")] | Annotated[list[TextOnlyPart], Tag("~list")],
    _tagged(_str_or_list, expected="a string or an array of text parts"),
]
UserContent = Annotated[
    Annotated[str, Tag("~str")] | Annotated[list[UserPart], Tag("~list")],
    _tagged(_str_or_list, expected="a string or an array of content parts"),
]
AssistantContent = Annotated[
    Annotated[str, Tag("~str")] | Annotated[list[AssistantPart], Tag("~list")],
    _tagged(_str_or_list, expected="a string or an array of text parts"),
]


def _text(content: str | list | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text if isinstance(part, TextPart) else part.refusal for part in content)


# --- messages --------------------------------------------------------------------------------------


class FunctionCallIn(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=256)
    # OpenAI sends a JSON string; an object is accepted too (some clients send one)
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(BaseModel):
    model_config = _STRICT
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn

    def to_llm(self) -> ToolCall:
        arguments = self.function.arguments
        if isinstance(arguments, dict):
            return ToolCall(id=self.id, name=self.function.name, arguments=arguments)
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return ToolCall(id=self.id, name=self.function.name, arguments={}, raw_arguments=arguments)
        return ToolCall(id=self.id, name=self.function.name, arguments=parsed)


class _MessageBase(BaseModel):
    model_config = _STRICT
    # OpenAI's participant name: accepted and not sent to the model (docs/api.md)
    name: str | None = Field(default=None, max_length=256)


class SystemMessage(_MessageBase):
    role: Literal["system", "developer"]
    content: TextContent

    def to_llm(self) -> LLMMessage:
        return LLMMessage(role="system", content=_text(self.content))


class UserMessage(_MessageBase):
    role: Literal["user"]
    content: UserContent

    def to_llm(self) -> LLMMessage:
        return LLMMessage(role="user", content=_text(self.content))


class AssistantMessage(_MessageBase):
    role: Literal["assistant"]
    content: AssistantContent | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)
    # what an earlier answer carried and a client echoes back (`message.model_dump()`)
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None

    def to_llm(self) -> LLMMessage:
        text = _text(self.content) or (self.refusal or "")
        calls = tuple(call.to_llm() for call in self.tool_calls or ())
        return LLMMessage(role="assistant", content=text, tool_calls=calls)


class ToolMessage(_MessageBase):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str = Field(min_length=1, max_length=256)

    def to_llm(self) -> LLMMessage:
        return LLMMessage(role="tool", content=_text(self.content), tool_call_id=self.tool_call_id, name=self.name)


class FunctionMessage(BaseModel):
    """The legacy `function` role (before tools): refused."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    role: Literal["function"]

    @model_validator(mode="after")
    def _refuse(self) -> FunctionMessage:
        raise _refused("The legacy `function` role is not supported: send tool results as `tool` messages.")


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _role(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        value = {"role": getattr(value, "role", None)}
    if not isinstance(value, dict):
        return "~object"
    role = value.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        return None
    return "~system" if role == "developer" else f"~{role}"


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("~system")] | Annotated[UserMessage, Tag("~user")]
    | Annotated[AssistantMessage, Tag("~assistant")] | Annotated[ToolMessage, Tag("~tool")]
    | Annotated[FunctionMessage, Tag("~function")] | NotObject,
    _tagged(_role, expected="one of system, developer, user, assistant or tool", key="role"),
]  # fmt: skip


# --- tools -----------------------------------------------------------------------------------------


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _FUNCTION_NAME.fullmatch(value):
            raise PydanticCustomError("invalid_value", "a function name is 1 to 64 letters, digits, `_` or `-`")
        return value


class FunctionTool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition

    def to_llm(self) -> ToolSpec:
        function = self.function
        return ToolSpec(
            name=function.name,
            description=function.description or "",
            parameters=function.parameters or {"type": "object", "properties": {}},
        )


class CustomTool(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    type: Literal["custom"]

    @model_validator(mode="after")
    def _refuse(self) -> CustomTool:
        raise _refused("Custom (free-form) tools are not supported: define `function` tools.")


Tool = Annotated[
    Annotated[FunctionTool, Tag("~function")] | Annotated[CustomTool, Tag("~custom")] | NotObject,
    _tagged(_by_type("function", "custom"), expected="a tool of type function", key="type"),
]


class FunctionName(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionName


class OtherToolChoice(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    type: Literal["allowed_tools", "custom"]

    @model_validator(mode="after")
    def _refuse(self) -> OtherToolChoice:
        raise _refused(f"`tool_choice` of type `{self.type}` is not supported: use auto, none, required or a function.")


def _tool_choice_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "~mode"
    return _by_type("function", "allowed_tools", "custom")(value)


ToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("~mode")]
    | Annotated[NamedToolChoice, Tag("~function")]
    | Annotated[OtherToolChoice, Tag("~allowed_tools")] | Annotated[OtherToolChoice, Tag("~custom")] | NotObject,
    _tagged(_tool_choice_kind, expected='"auto", "none", "required" or {"type": "function", "function": {"name": …}}'),
]  # fmt: skip


# --- response_format -------------------------------------------------------------------------------


class TextFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = _STRICT
    name: str
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _FUNCTION_NAME.fullmatch(value):
            raise PydanticCustomError("invalid_value", "a schema name is 1 to 64 letters, digits, `_` or `-`")
        return value


class JsonSchemaFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("~text")] | Annotated[JsonObjectFormat, Tag("~json_object")]
    | Annotated[JsonSchemaFormat, Tag("~json_schema")] | NotObject,
    _tagged(_by_type("text", "json_object", "json_schema"), expected="a format of type text, json_object or json_schema",
            key="type"),
]  # fmt: skip


# --- the body --------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None
    # OpenAI pads chunks against side channels; Parley sends none, whatever this says
    include_obfuscation: bool | None = None


Stop = Annotated[
    Annotated[str, Tag("~str")]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES), Tag("~list")],
    _tagged(_str_or_list, expected=f"a string or an array of at most {MAX_STOP_SEQUENCES} strings"),
]

Count = Annotated[int, Field(ge=1, le=MAX_INT)]


class ChatCompletionBody(BaseModel):
    """`POST /v1/chat/completions`. Field order is the order errors are reported in."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    # how the answer comes back (Parley's rendering)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # forwarded to the model
    max_completion_tokens: Count | None = None
    max_tokens: Count | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: Stop | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=MAX_INT)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=256)
    # Parley's conversation mode (`parley_conversation`); other keys are accepted and not kept
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)
    # accepted at their default only
    n: Count | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    service_tier: str | None = None
    # refused whenever set
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None) -> int | None:
        if value is not None and value > 1:
            raise _refused("Only one choice per request (`n: 1`) is supported.")
        return value

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise _refused("`logprobs` are not available: Parley's providers do not report them.")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise _refused("`top_logprobs` are not available: Parley's providers do not report them.")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict | None) -> dict | None:
        if value:
            raise _refused("`logit_bias` is not supported: token ids differ between Parley's providers.")
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: bool | None) -> bool | None:
        if value:
            raise _refused("`store: true` is not supported: keep an exchange with the X-Parley-Conversation header.")
        return value

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and value != ["text"]:
            raise _refused('Only text answers are supported (`modalities: ["text"]`).')
        return value

    @field_validator("service_tier")
    @classmethod
    def _service_tier(cls, value: str | None) -> str | None:
        if value not in (None, "auto", "default"):
            raise _refused("Only the default service tier is available (`auto` or `default`).")
        return value

    @field_validator(
        "audio", "prediction", "web_search_options", "functions", "function_call", "reasoning_effort",
        "verbosity", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
    )  # fmt: skip
    @classmethod
    def _unsupported(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if value is not None:
            hint = REFUSED_WHEN_SET.get(info.field_name, "")
            raise _refused(f"`{info.field_name}` is not supported{': ' + hint if hint else ''}.")
        return value

    def check(self) -> None:
        """What no single field says: parameters that need another one (OpenAI's rules)."""
        if self.stream_options is not None and not self.stream:
            raise _invalid("stream_options", "`stream_options` is only allowed with `stream: true`.")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {tool.function.name for tool in self.tools or ()}:
                raise _invalid("tool_choice", f"`tool_choice` names the function `{name}`, which is not in `tools`.")
        elif self.tool_choice in ("auto", "required") and not self.tools:
            raise _invalid("tool_choice", "`tool_choice` is only allowed with `tools`.")
        if self.parallel_tool_calls is not None and not self.tools:
            raise _invalid("parallel_tool_calls", "`parallel_tool_calls` is only allowed with `tools`.")

    # --- what the engine gets ---------------------------------------------------------------------

    def llm_messages(self) -> tuple[LLMMessage, ...]:
        return tuple(message.to_llm() for message in self.messages)

    def llm_tools(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.to_llm() for tool in self.tools or ())

    def llm_tool_choice(self) -> str | None:
        """OpenAI's tool_choice as ChatRequest's: "auto", "none", "required" or the function's name."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice

    def llm_stop(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def llm_response_format(self) -> dict[str, Any] | None:
        """`{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {name, schema, strict …}}`;
        None for plain text (the default)."""
        fmt = self.response_format
        if fmt is None or isinstance(fmt, TextFormat):
            return None
        if isinstance(fmt, JsonObjectFormat):
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": fmt.json_schema.model_dump(by_alias=True, exclude_none=True)}

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def conversation(self) -> str | None:
        return (self.metadata or {}).get("parley_conversation") or None


# Why each always-refused parameter is (the text of its 400, and of docs/api.md).
REFUSED_WHEN_SET = {
    "audio": "Parley's models answer in text only",
    "prediction": "predicted outputs are an OpenAI-only feature",
    "web_search_options": "Parley's models do not search the web",
    "functions": "the legacy functions API is replaced by `tools`",
    "function_call": "the legacy functions API is replaced by `tool_choice`",
    "reasoning_effort": "Parley does not pass reasoning controls to its providers",
    "verbosity": "Parley does not pass verbosity controls to its providers",
    "prompt_cache_key": "Parley's providers cache prompts on their own",
    "prompt_cache_retention": "Parley's providers cache prompts on their own",
    "safety_identifier": "send `user` instead",
}

PARAMETERS = tuple(ChatCompletionBody.model_fields)


# --- parsing ---------------------------------------------------------------------------------------

_TYPE_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def _param(loc: tuple) -> str | None:
    """`messages[0].content` from pydantic's location (union tags, which start with `~`, left out)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("~"):
            text += f".{part}" if text else part
    return text[:200] or None


def _error(error: dict) -> ParleyError:
    kind, param = error["type"], _param(error["loc"])
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error") or "not valid JSON"
        return ParleyError(f"The body is not valid JSON (UTF-8): {reason}.", code="invalid_json")
    if kind == "model_type" and param is None:
        return ParleyError("The body must be a JSON object.", code="invalid_type")
    if kind == "extra_forbidden":
        where = param or "?"
        if "." in where or "[" in where:
            return ParleyError(f"Unrecognized argument `{where}`.", code="unknown_parameter", param=where)
        return ParleyError(f"Unrecognized request argument supplied: {where}", code="unknown_parameter", param=where)
    if kind == "unsupported_parameter":
        return ParleyError(error["msg"], code="unsupported_parameter", param=param)
    if kind == "missing":
        return ParleyError(f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param)
    if kind.startswith("invalid_tag:"):  # a union's choosing field (`role`, `type`) has no valid value
        key = kind.split(":", 1)[1]
        param = f"{param}.{key}" if param else key
        kind = "invalid_value"
    code = "invalid_type" if kind.endswith("_type") else "invalid_value"
    message = error["msg"].replace("a valid dictionary", "an object")
    if message.startswith("Input should be"):
        message = "should be" + message[len("Input should be") :]
    if param is None:
        return ParleyError(f"Invalid body: {message}.", code=code)
    return ParleyError(f"Invalid value for '{param}': {message}.", code=code, param=param)


class BodyTooLarge(ParleyError):
    """The request body is larger than the limit."""

    code = "payload_too_large"


def body_too_large(size: int | None = None) -> BodyTooLarge:
    got = f"{size} bytes" if size is not None else f"more than {MAX_BODY_BYTES} bytes"
    return BodyTooLarge(f"The request body is {got}; the limit is {MAX_BODY_BYTES} bytes.")


def chat_body_parse(raw: bytes) -> ChatCompletionBody:
    """Validate the raw bytes of a chat-completions body; a refusal is a ParleyError naming `param`."""
    if len(raw) > MAX_BODY_BYTES:
        raise body_too_large(len(raw))
    try:
        body = ChatCompletionBody.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        # the most specific first: an unsupported parameter says more than a type error beside it
        errors.sort(key=lambda e: e["type"] != "unsupported_parameter")
        raise _error(errors[0]) from None
    body.check()
    return body


__all__ = [
    "MAX_BODY_BYTES",
    "PARAMETERS",
    "REFUSED_WHEN_SET",
    "BodyTooLarge",
    "ChatCompletionBody",
    "body_too_large",
    "chat_body_parse",
]
