"""Offline token counting and the context-window fitter."""

import hashlib
import os
import socket

import pytest

from llm import tokens
from llm.conf import TIKTOKEN_DIR
from llm.types import Message


def test_the_encoding_files_ship_with_the_repository_and_match_tiktokens_hashes():
    expected = {
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "fb374d419588a4632f3f557e76b4b70aebbca790": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    }
    for name, sha256 in expected.items():
        assert hashlib.sha256((TIKTOKEN_DIR / name).read_bytes()).hexdigest() == sha256


def test_counting_works_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    tokens._encodings.clear()
    assert tokens.count_text("hello world") == 2
    assert tokens.count_text("hello world", "gpt-4") == 2  # cl100k_base
    assert tokens.encoding("cl100k_base").name == "cl100k_base"
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(TIKTOKEN_DIR)


def test_special_token_text_is_counted_not_rejected():
    assert tokens.count_text("<|endoftext|>") > 1


def test_count_message_includes_framing_and_tool_calls():
    from llm.types import ToolCall

    plain = tokens.count_message(Message("user", "hello world"))
    assert plain == 2 + tokens.MESSAGE_OVERHEAD
    with_call = tokens.count_message(Message("assistant", "", tool_calls=(ToolCall("c1", "calculator", {"e": "1"}),)))
    assert with_call > tokens.MESSAGE_OVERHEAD
    assert tokens.count_messages([Message("user", "hello world")]) == plain + tokens.REPLY_PRIMING


def _history(n: int) -> tuple[list[Message], list[int]]:
    messages = [Message("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(n)]
    return messages, [10] * n


def test_fit_keeps_the_system_prompt_and_the_most_recent_messages():
    system = Message("system", "Be brief.")
    messages, counts = _history(10)
    budget_for_four = tokens.count_message(system) + tokens.REPLY_PRIMING + 4 * (10 + tokens.MESSAGE_OVERHEAD)
    kept = tokens.fit_messages(system, messages, counts, context_window=budget_for_four + 100 + 5,
                               max_output_tokens=100)
    assert kept[0] is system
    assert kept[1:] == messages[-4:]  # starts with a user message (messages[6])


def test_a_cut_history_starts_with_a_user_message():
    messages, counts = _history(10)
    per = 10 + tokens.MESSAGE_OVERHEAD
    kept = tokens.fit_messages(None, messages, counts, context_window=3 * per + tokens.REPLY_PRIMING,
                               max_output_tokens=0)
    assert kept == messages[-2:]  # messages[-3] (an answer) would fit, but its question did not


def test_fit_keeps_everything_that_fits_and_works_without_system():
    messages, counts = _history(6)
    assert tokens.fit_messages(None, messages, counts, context_window=10_000, max_output_tokens=1_000) == messages


def test_fit_keeps_the_newest_message_even_when_it_alone_is_too_long():
    messages, counts = _history(3)
    counts[-1] = 50_000
    kept = tokens.fit_messages(None, messages, counts, context_window=1_000, max_output_tokens=100)
    assert kept == [messages[-1]]


def test_fit_never_starts_with_an_orphaned_tool_result():  # nor with the answer that called it
    from llm.types import ToolCall

    messages = [
        Message("user", "old question"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "calculator", {}),)),
        Message("tool", "4", tool_call_id="c1", name="calculator"),
        Message("assistant", "It is 4."),
        Message("user", "thanks"),
    ]
    counts = [1000, 10, 10, 10, 10]
    per = 10 + tokens.MESSAGE_OVERHEAD
    kept = tokens.fit_messages(None, messages, counts, context_window=3 * per + tokens.REPLY_PRIMING + 1,
                               max_output_tokens=0)
    assert [m.role for m in kept] == ["user"]


def test_fit_requires_one_count_per_message():
    with pytest.raises(ValueError):
        tokens.fit_messages(None, [Message("user", "a")], [], context_window=100, max_output_tokens=10)
