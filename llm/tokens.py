"""Token counting that works offline, and the context-window fitter.

tiktoken downloads its encoding files on first use, which fails without internet. The files ship
in llm/data/tiktoken/, named by the SHA-1 of their download URL as tiktoken's cache expects
(it checks each against its built-in SHA-256), and TIKTOKEN_CACHE_DIR points there before tiktoken
loads an encoding. Counts are exact for OpenAI models and a close estimate for the others.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm.conf import TIKTOKEN_DIR
from llm.types import Message

if TYPE_CHECKING:
    import tiktoken

# per-message framing the chat formats add (role, separators), as OpenAI documents it
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3

_FILES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}
_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


def _use_bundled_files() -> None:
    current = os.environ.get("TIKTOKEN_CACHE_DIR", "")
    if not current or not all(os.path.exists(os.path.join(current, name)) for name in _FILES.values()):
        os.environ["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_DIR)


def encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    found = _encodings.get(name)
    if found is not None:
        return found
    with _lock:
        if name not in _encodings:
            _use_bundled_files()
            import tiktoken

            _encodings[name] = tiktoken.get_encoding(name)
        return _encodings[name]


def _encoding_name(model: str | None) -> str:
    """o200k_base (GPT-4o and later, and the estimate for other vendors); cl100k_base for older GPTs."""
    if model and (model.startswith("gpt-4") or model.startswith("gpt-3.5")) and "4o" not in model and "4.1" not in model:
        return "cl100k_base"
    return "o200k_base"


def count_text(text: str, model: str | None = None) -> int:
    if not text:
        return 0
    return len(encoding(_encoding_name(model)).encode(text, disallowed_special=()))


def count_message(message: Message, model: str | None = None) -> int:
    tokens = MESSAGE_OVERHEAD + count_text(message.content, model)
    for call in message.tool_calls:
        tokens += count_text(call.name, model) + count_text(call.raw_arguments or json.dumps(call.arguments), model)
    if message.name:
        tokens += count_text(message.name, model)
    return tokens


def count_messages(messages: Sequence[Message], model: str | None = None) -> int:
    """The prompt size of a whole request, to estimate it before the call."""
    return REPLY_PRIMING + sum(count_message(m, model) for m in messages)


def fit_messages(
    system: Message | None,
    messages: Sequence[Message],
    token_counts: Sequence[int],
    context_window: int,
    max_output_tokens: int,
) -> list[Message]:
    """The system prompt, then the most recent messages that fit in (context window − output tokens).

    `token_counts[i]` is the stored count of `messages[i]` (its content; the per-message framing is
    added here), so nothing is re-tokenized. Older messages are dropped; the newest message is kept
    even when it alone is too long, so the provider answers with a clear ContextTooLong. A history
    that had to be cut starts at a user message.
    """
    if len(token_counts) != len(messages):
        raise ValueError("one token count per message")
    budget = context_window - max_output_tokens - REPLY_PRIMING
    if system is not None:
        budget -= count_message(system)
    kept_from = len(messages)
    for index in range(len(messages) - 1, -1, -1):
        count = token_counts[index]
        cost = (count if count is not None and count >= 0 else count_text(messages[index].content)) + MESSAGE_OVERHEAD
        if cost > budget and kept_from < len(messages):
            break
        budget -= cost
        kept_from = index
        if budget < 0:
            break
    kept = list(messages[kept_from:])
    if kept_from > 0:
        # a cut history starts at a user message: not with an answer (or a tool result) whose question
        # was dropped, which several vendors refuse
        while len(kept) > 1 and kept[0].role != "user":
            kept.pop(0)
    return ([system] if system is not None else []) + kept


# --- an upper bound of what a vendor bills for a prompt ------------------------------------------
#
# Reservations must never be smaller than what a provider can charge. For OpenAI's own models the
# tiktoken count above is the vendor's count (chat formatting included). For every other vendor
# (Anthropic, Gemini, OpenAI-compatible servers running their own tokenizer) Parley does not have the
# tokenizer, so the bound is its UTF-8 length: every token of a byte-level BPE covers at least one
# byte, and every SentencePiece token at least one character (or one byte, with byte fallback), so no
# such tokenizer makes more tokens than the text has bytes. The chat format adds special tokens per
# message and per request, and vendors prepend a system prompt of their own when tools are sent
# (Anthropic documents 313–346 tokens for Claude 4's); the constants below cover each with room.
# docs/billing.md and billing/README.md describe the bound and what it costs in headroom.
BOUND_MESSAGE_OVERHEAD = 8
BOUND_REQUEST_OVERHEAD = 16
BOUND_TOOLS_OVERHEAD = 600
EXACT_COUNT_PROVIDERS = frozenset({"openai", "demo"})


def _message_bytes(message: Message) -> int:
    size = len(message.content.encode("utf-8"))
    for call in message.tool_calls:
        size += len(call.name.encode("utf-8")) + len((call.raw_arguments or json.dumps(call.arguments)).encode("utf-8"))
    if message.name:
        size += len(message.name.encode("utf-8"))
    if message.tool_call_id:
        size += len(message.tool_call_id.encode("utf-8"))
    return size


def prompt_tokens_bound(messages: Sequence[Message], *, tools_json: str = "", provider: str, counted: int) -> int:
    """The most tokens `provider` can bill for this prompt; `counted` is Parley's tiktoken count of it.

    Exact providers (OpenAI, the demo): `counted`. Others: the UTF-8 bound above (never below `counted`).
    """
    if provider in EXACT_COUNT_PROVIDERS:
        return counted
    bound = BOUND_REQUEST_OVERHEAD + sum(_message_bytes(m) + BOUND_MESSAGE_OVERHEAD for m in messages)
    if tools_json:
        bound += len(tools_json.encode("utf-8")) + BOUND_TOOLS_OVERHEAD
    return max(bound, counted)
