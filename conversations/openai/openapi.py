"""The OpenAPI description of /v1/ (added to /api/schema/ by a drf-spectacular post-processing hook).

Every parameter of conversations.openai.schemas.ChatCompletionBody is described here with what
Parley does with it (a test keeps the two in step), the streamed answer as `text/event-stream`, and
every status an answer can have.
"""

from __future__ import annotations

from conversations.openai import views
from conversations.openai.schemas import MAX_BODY_BYTES, MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_TOOLS

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "example": "invalid_request_error"},
                "code": {"type": "string", "nullable": True, "example": "unsupported_parameter"},
                "param": {"type": "string", "nullable": True, "example": "logprobs"},
            },
        }
    },
}
USAGE_SCHEMA = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "description": "Input tokens, cached ones included."},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
    },
}
TOOL_CALL_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string", "description": "JSON text"}},
        },
    },
}
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"type": "string", "enum": ["text", "input_text"]}, "text": {"type": "string"}},
    "additionalProperties": False,
}
_REFUSAL_PART = {
    "type": "object",
    "required": ["type", "refusal"],
    "properties": {"type": {"type": "string", "enum": ["refusal"]}, "refusal": {"type": "string"}},
    "additionalProperties": False,
}
_CONTENT = {
    "description": "A string, or an array of text parts (image, audio and file parts: 400 `unsupported_parameter`).",
    "oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}],
}
_ASSISTANT_CONTENT = {
    "description": "A string, or an array of text and refusal parts; null with `tool_calls`.",
    "nullable": True,
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [_TEXT_PART, _REFUSAL_PART]}}],
}
_NULL = {"enum": [None], "nullable": True, "description": "Accepted as null only (an earlier answer's field)."}
TOOL_CALL_IN_SCHEMA = {
    "type": "object",
    "required": ["id", "function"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 256},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256},
                "arguments": {"oneOf": [{"type": "string", "description": "JSON text"}, {"type": "object"}]},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_NAME = {"type": "string", "maxLength": 256, "description": "A participant name: accepted, not sent to the model."}
MESSAGE_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "title": "System or developer message",
            "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": ["system", "developer"]}, "content": _CONTENT, "name": _NAME},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "title": "User message",
            "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": ["user"]}, "content": _CONTENT, "name": _NAME},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "title": "Assistant message (an earlier answer)",
            "required": ["role"],
            "properties": {
                "role": {"type": "string", "enum": ["assistant"]},
                "content": _ASSISTANT_CONTENT,
                "name": _NAME,
                "refusal": {"type": "string", "nullable": True},
                "tool_calls": {"type": "array", "items": TOOL_CALL_IN_SCHEMA, "maxItems": MAX_TOOLS, "nullable": True},
                "annotations": {"type": "array", "items": {}, "nullable": True, "description": "Ignored."},
                "audio": _NULL,
                "function_call": _NULL,
            },
            "additionalProperties": False,
        },
        {
            "type": "object",
            "title": "Tool result",
            "required": ["role", "content", "tool_call_id"],
            "properties": {
                "role": {"type": "string", "enum": ["tool"]},
                "content": _CONTENT,
                "tool_call_id": {"type": "string", "minLength": 1, "maxLength": 256},
                "name": _NAME,
            },
            "additionalProperties": False,
        },
    ]
}
TOOL_SCHEMA = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"type": "string", "enum": ["function"], "description": "`custom` tools: 400 `unsupported_parameter`."},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "JSON schema of the arguments object."},
                "strict": {"type": "boolean", "nullable": True},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

_FORWARDED = "Forwarded to the model (docs/api.md lists which providers honour it; where the model cannot: 400 `unsupported_parameter`)."
_DEFAULT_ONLY = "Accepted at its default; any other value: 400 `unsupported_parameter`."
_REFUSED = "Not supported: any value but null is refused with 400 `unsupported_parameter`."
_NUMBER = {"type": "number", "nullable": True}

REQUEST_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "description": (
        f"The body is at most {MAX_BODY_BYTES} bytes (larger: 413 `payload_too_large`). Types are strict "
        "(`\"5\"` is not a number). An unknown parameter is refused with 400 `unknown_parameter`, as OpenAI "
        "refuses it."
    ),
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256, "description": "A Parley model alias (GET /v1/models).",
                  "example": "demo"},
        "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": MESSAGE_SCHEMA},
        "stream": {"type": "boolean", "nullable": True, "default": False,
                   "description": "Answer as `chat.completion.chunk` server-sent events ending in `data: [DONE]`."},
        "stream_options": {
            "type": "object",
            "nullable": True,
            "description": "Only with `stream: true`.",
            "properties": {
                "include_usage": {"type": "boolean", "nullable": True,
                                  "description": "A last chunk with `usage` and no choices."},
                "include_obfuscation": {"type": "boolean", "nullable": True,
                                        "description": "Accepted; Parley adds no obfuscation padding."},
            },
            "additionalProperties": False,
        },
        "max_completion_tokens": {"type": "integer", "minimum": 1, "nullable": True,
                                  "description": "The answer's longest length; clamped to the plan's and the model's limit."},
        "max_tokens": {"type": "integer", "minimum": 1, "nullable": True,
                       "description": "The older name of `max_completion_tokens` (which wins when both are sent)."},
        "temperature": {**_NUMBER, "minimum": 0, "maximum": 2, "description": _FORWARDED},
        "top_p": {**_NUMBER, "minimum": 0, "maximum": 1, "description": _FORWARDED},
        "presence_penalty": {**_NUMBER, "minimum": -2, "maximum": 2, "description": _FORWARDED},
        "frequency_penalty": {**_NUMBER, "minimum": -2, "maximum": 2, "description": _FORWARDED},
        "stop": {
            "nullable": True,
            "description": f"Up to {MAX_STOP_SEQUENCES} sequences. {_FORWARDED}",
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP_SEQUENCES},
            ],
        },
        "seed": {"type": "integer", "nullable": True, "description": _FORWARDED},
        "response_format": {
            "nullable": True,
            "description": f"`text`, `json_object` or `json_schema`. {_FORWARDED}",
            "oneOf": [
                {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}},
                 "additionalProperties": False},
                {
                    "type": "object",
                    "required": ["type", "json_schema"],
                    "properties": {
                        "type": {"type": "string", "enum": ["json_schema"]},
                        "json_schema": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                                "description": {"type": "string", "nullable": True},
                                "schema": {"type": "object", "nullable": True},
                                "strict": {"type": "boolean", "nullable": True},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
            ],
        },
        "tools": {"type": "array", "nullable": True, "maxItems": MAX_TOOLS, "items": TOOL_SCHEMA,
                  "description": "Client-defined functions: the model's calls come back in `tool_calls`; Parley runs none."},
        "tool_choice": {
            "nullable": True,
            "description": "Only with `tools`. `allowed_tools` and `custom`: 400 `unsupported_parameter`.",
            "oneOf": [
                {"type": "string", "enum": ["auto", "none", "required"]},
                {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                    },
                },
            ],
        },
        "parallel_tool_calls": {"type": "boolean", "nullable": True, "description": f"Only with `tools`. {_FORWARDED}"},
        "user": {"type": "string", "nullable": True, "maxLength": 256, "description": _FORWARDED},
        "metadata": {
            "type": "object",
            "nullable": True,
            "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 512},
            "description": "`parley_conversation`: `new` or a conversation id (conversation mode). Other keys are accepted and not kept.",
            "properties": {"parley_conversation": {"type": "string"}},
        },
        "n": {"type": "integer", "nullable": True, "minimum": 1, "description": f"1. {_DEFAULT_ONLY}"},
        "logprobs": {"type": "boolean", "nullable": True, "description": f"false. {_DEFAULT_ONLY}"},
        "top_logprobs": {"type": "integer", "nullable": True, "description": _REFUSED},
        "logit_bias": {"type": "object", "nullable": True, "description": f"{{}}. {_DEFAULT_ONLY}"},
        "store": {"type": "boolean", "nullable": True, "description": f"false. {_DEFAULT_ONLY}"},
        "modalities": {"type": "array", "items": {"type": "string"}, "nullable": True,
                       "description": f'["text"]. {_DEFAULT_ONLY}'},
        "service_tier": {"type": "string", "nullable": True, "description": f"`auto` or `default`. {_DEFAULT_ONLY}"},
        "audio": {"nullable": True, "description": _REFUSED},
        "prediction": {"nullable": True, "description": _REFUSED},
        "web_search_options": {"nullable": True, "description": _REFUSED},
        "functions": {"nullable": True, "description": f"The legacy functions API (use `tools`). {_REFUSED}"},
        "function_call": {"nullable": True, "description": f"The legacy functions API (use `tool_choice`). {_REFUSED}"},
        "reasoning_effort": {"nullable": True, "description": _REFUSED},
        "verbosity": {"nullable": True, "description": _REFUSED},
        "prompt_cache_key": {"nullable": True, "description": _REFUSED},
        "prompt_cache_retention": {"nullable": True, "description": _REFUSED},
        "safety_identifier": {"nullable": True, "description": f"Send `user` instead. {_REFUSED}"},
    },
}
COMPLETION_SCHEMA = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "The model that answered (a fallback's alias when one did)."},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "required": ["role"],
                        "properties": {
                            "role": {"type": "string", "enum": ["assistant"]},
                            "content": {"type": "string", "nullable": True},
                            "refusal": {"type": "string", "nullable": True},
                            "tool_calls": {"type": "array", "items": TOOL_CALL_SCHEMA},
                        },
                    },
                    "logprobs": {"type": "object", "nullable": True},
                    "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls", "content_filter"]},
                },
            },
        },
        "usage": USAGE_SCHEMA,
        "system_fingerprint": {"type": "string", "nullable": True},
    },
}
MODEL_SCHEMA = {
    "type": "object",
    "required": ["id", "object", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["model"]},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
SSE_DESCRIPTION = (
    "With `stream: true`: `data: <chat.completion.chunk JSON>` events; the last chunk has a `finish_reason`, "
    "then (with `stream_options.include_usage`) a chunk with `usage` and no choices, then `data: [DONE]`. "
    "An answer that fails after it began ends with `data: {\"error\": {…}}` (OpenAI's error object) and "
    "nothing after it: no finish_reason, usage or `[DONE]`."
)

_ERROR_TEXT = {
    400: "Invalid request: malformed JSON, non-UTF-8 bytes, a field of the wrong type, nesting deeper than 200 "
         "levels, an unknown parameter (`unknown_parameter`) or one Parley or the model cannot honour "
         "(`unsupported_parameter`); `param` names it. Also a prompt longer than the plan allows "
         "(`message_too_long`) or than the model reads (`context_length_exceeded`).",
    401: "Missing (`missing_api_key`), wrong, revoked or expired API key (`invalid_api_key`).",
    403: "The organization's plan does not include API access (`permission_denied`).",
    404: "Unknown model, one your plan lacks or one without a price (`model_not_found`); a conversation that is "
         "not yours; an unknown path.",
    405: "Wrong method.",
    409: "An answer is already streaming in that conversation (`busy`).",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes (`payload_too_large`).",
    429: "Rate limited (`rate_limit_exceeded`), budget used up (`budget_exceeded`) or the provider is rate limiting "
         "(`provider_rate_limited`); see Retry-After.",
    500: "A bug in Parley (`internal_error`); it is logged.",
    502: "The model's provider failed (`provider_error`), before or during the answer; what was generated is billed.",
    503: "The answer was interrupted (the server stopped) or Parley cannot serve now.",
    504: "The model's provider did not answer in time (`provider_timeout`).",
}  # fmt: skip


def _errors(*statuses: int) -> dict:
    return {
        str(status): {"description": _ERROR_TEXT[status], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for status in statuses
    }


_CONVERSATION_HEADER_OUT = {
    views.CONVERSATION_HEADER: {
        "description": "The conversation the exchange was kept in (conversation mode only).",
        "schema": {"type": "string", "format": "uuid"},
    }
}


def openapi_paths(result: dict, generator, request, public) -> dict:
    """drf-spectacular post-processing hook: describe the OpenAI-compatible endpoint in /api/schema/."""
    security = [{"apiKey": []}]
    tags = ["openai-compatible"]
    paths = result.setdefault("paths", {})
    paths["/v1/chat/completions"] = {
        "post": {
            "operationId": "openai_chat_completions",
            "summary": "Chat completion (OpenAI-compatible)",
            "description": (views.__doc__ or "").strip(),
            "tags": tags,
            "security": security,
            "parameters": [
                {
                    "in": "header",
                    "name": views.CONVERSATION_HEADER,
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "`new`, or the id of one of your conversations: keep the exchange as a Parley conversation.",
                }
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}},
            "responses": {
                "200": {
                    "description": "The completion (`chat.completion`); with `stream: true`, server-sent events.",
                    "headers": _CONVERSATION_HEADER_OUT,
                    "content": {
                        "application/json": {"schema": COMPLETION_SCHEMA},
                        "text/event-stream": {"schema": {"type": "string", "description": SSE_DESCRIPTION}},
                    },
                },
                **_errors(400, 401, 403, 404, 405, 409, 413, 429, 500, 502, 503, 504),
            },
        }
    }
    paths["/v1/models"] = {
        "get": {
            "operationId": "openai_models_list",
            "summary": "Models your organization may use (OpenAI-compatible)",
            "tags": tags,
            "security": security,
            "responses": {
                "200": {
                    "description": "OpenAI's model list.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["object", "data"],
                                "properties": {
                                    "object": {"type": "string", "enum": ["list"]},
                                    "data": {"type": "array", "items": MODEL_SCHEMA},
                                },
                            }
                        }
                    },
                },
                **_errors(401, 403, 404, 405, 500),
            },
        }
    }
    paths["/v1/models/{model_id}"] = {
        "get": {
            "operationId": "openai_models_retrieve",
            "summary": "One model (OpenAI-compatible)",
            "tags": tags,
            "security": security,
            "parameters": [{"in": "path", "name": "model_id", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "OpenAI's model object.", "content": {"application/json": {"schema": MODEL_SCHEMA}}},
                **_errors(401, 403, 404, 405, 500),
            },
        }
    }
    return result


__all__ = ["REQUEST_SCHEMA", "openapi_paths"]
