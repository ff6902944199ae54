"""The fake provider's "vendor count" usage mode: bill a request the way its vendor would.

`reply(*deltas, usage=VENDOR_USAGE)` streams at most the request's own output cap of deltas (OpenAI
`max_completion_tokens` / `max_tokens`, Anthropic `max_tokens`, Gemini
`generationConfig.maxOutputTokens`; a truncated answer finishes with `length`), and reports:

- input tokens counted from the request body, by vendor format:
  - **OpenAI**: OpenAI's documented chat count with tiktoken `o200k_base` — 3 tokens per message plus
    the tokens of each of its string values (the role included; a `name` adds 1 more), and 3 tokens
    priming the reply. Tool definitions: the tokens of their JSON.
  - **Anthropic and Gemini** (whose tokenizers Parley does not have): `ceil(UTF-8 bytes / 2) + 8` per
    message (the system prompt and the tool definitions count as one message each). That is more than
    tiktoken counts for most text (about 4 bytes per token for English, and far fewer tokens than
    bytes / 2 for accented or CJK text), so a reservation made from tiktoken alone falls short;
- output tokens: the deltas it streams (one token each).

Without this mode, a reply's usage is what the test scripts (see script.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from .script import Reply

VENDOR_USAGE = "vendor"  # reply(..., usage=VENDOR_USAGE)

OPENAI_TOKENS_PER_MESSAGE = 3
OPENAI_TOKENS_PER_NAME = 1
OPENAI_REPLY_PRIMING = 3
BYTES_PER_TOKEN = 2  # Anthropic and Gemini formats
TOKENS_PER_MESSAGE = 8  # Anthropic and Gemini formats


def _o200k(text: str) -> int:
    from llm.tokens import encoding  # the bundled tiktoken files (works offline)

    return len(encoding("o200k_base").encode(text, disallowed_special=())) if text else 0


def _by_bytes(text: str) -> int:
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _openai_input(body: dict[str, Any]) -> int:
    tokens = OPENAI_REPLY_PRIMING
    for message in body.get("messages") or []:
        tokens += OPENAI_TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content" and isinstance(value, list):
                value = "".join(part.get("text", "") for part in value if isinstance(part, dict))
            elif key == "tool_calls" and isinstance(value, list):
                value = "".join(
                    (call.get("function") or {}).get("name", "") + _json((call.get("function") or {}).get("arguments", ""))
                    for call in value
                    if isinstance(call, dict)
                )
            if isinstance(value, str):
                tokens += _o200k(value)
            if key == "name":
                tokens += OPENAI_TOKENS_PER_NAME
    if body.get("tools"):
        tokens += _o200k(_json(body["tools"]))
    return tokens


def _anthropic_block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return block.get("text", "")
    if kind == "tool_use":
        return block.get("name", "") + _json(block.get("input", {}))
    if kind == "tool_result":
        content = block.get("content", "")
        return content if isinstance(content, str) else "".join(_anthropic_block_text(b) for b in content or [])
    return _json(block)


def _anthropic_input(body: dict[str, Any]) -> int:
    tokens = 0
    system = body.get("system")
    if system:
        tokens += _by_bytes(system if isinstance(system, str) else "".join(_anthropic_block_text(b) for b in system))
    for message in body.get("messages") or []:
        content = message.get("content", "")
        text = content if isinstance(content, str) else "".join(_anthropic_block_text(b) for b in content or [])
        tokens += _by_bytes(text)
    if body.get("tools"):
        tokens += _by_bytes(_json(body["tools"]))
    return tokens


def _gemini_parts_text(parts: Any) -> str:
    out = []
    for part in parts or []:
        if not isinstance(part, dict):
            continue
        if "text" in part:
            out.append(part.get("text") or "")
        elif "functionCall" in part:
            out.append(_json(part["functionCall"]))
        elif "functionResponse" in part:
            out.append(_json(part["functionResponse"]))
    return "".join(out)


def _gemini_input(body: dict[str, Any]) -> int:
    tokens = 0
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system:
        tokens += _by_bytes(_gemini_parts_text(system.get("parts")) if isinstance(system, dict) else str(system))
    for content in body.get("contents") or []:
        tokens += _by_bytes(_gemini_parts_text(content.get("parts")) if isinstance(content, dict) else str(content))
    if body.get("tools"):
        tokens += _by_bytes(_json(body["tools"]))
    return tokens


_INPUT = {"openai": _openai_input, "anthropic": _anthropic_input, "gemini": _gemini_input}


def vendor_input_tokens(vendor: str, body: dict[str, Any]) -> int:
    """The input tokens `vendor` bills for this request body (see the module's docstring)."""
    return _INPUT[vendor](body)


def output_cap(vendor: str, body: dict[str, Any]) -> int | None:
    """The most output tokens the request allows, as its vendor reads it (None: no cap sent)."""
    if vendor == "openai":
        value = body.get("max_completion_tokens") or body.get("max_tokens")
    elif vendor == "anthropic":
        value = body.get("max_tokens")
    else:
        value = (body.get("generationConfig") or {}).get("maxOutputTokens")
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def resolve(step: Reply, vendor: str, body: dict[str, Any]) -> Reply:
    """A vendor-counted reply made concrete for this request: deltas cut at the cap, usage counted."""
    if step.usage != VENDOR_USAGE:
        return step
    cap = output_cap(vendor, body)
    text = list(step.text)
    finish = step.finish
    if cap is not None and len(text) > cap:
        text, finish = text[:cap], finish or "length"
    cut = step.drop_after is not None or step.stall_after is not None or step.error_after is not None
    usage = None if cut else (vendor_input_tokens(vendor, body), len(text), 0)
    return replace(step, text=text, finish=finish, usage=usage)
