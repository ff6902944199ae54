"""The tool registry, the calculator's safe evaluator, current_time, and ToolSet.run never raising."""

import asyncio

import pytest

from llm import tools
from llm.tools import Tool, ToolSet, calculate, toolset_for_tier
from llm.types import ToolCall


@pytest.mark.parametrize(("expression", "value"), [
    ("2+3*4", 14), ("(2+3)*4", 20), ("2**10", 1024), ("2^10", 1024), ("10/4", 2.5), ("7//2", 3), ("7%3", 1),
    ("-3+1", -2), ("sqrt(16)", 4.0), ("round(pi, 2)", 3.14), ("max(1, 5, 3)", 5), ("abs(-2.5)", 2.5),
    ("factorial(5)", 120), ("log10(1000)", 3.0),
])
def test_calculator_evaluates(expression, value):
    assert calculate(expression) == pytest.approx(value)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('echo hi')", "().__class__.__bases__", "open('/etc/passwd')", "x", "'a' * 3",
    "lambda: 1", "[1, 2]", "9**9**9", "10**1000", "1/0", "factorial(1000)", "sqrt(-1)", "2 +", "a.b",
    "1" * 600, "True + 1", "sqrt(x=4)",
])
def test_calculator_refuses_what_is_not_plain_arithmetic(expression):
    with pytest.raises(tools.ToolError):
        calculate(expression)


def run(toolset: ToolSet, call: ToolCall):
    return asyncio.run(toolset.run(call))


def test_calculator_tool_through_the_toolset():
    result = run(toolset_for_tier("free"), ToolCall("c1", "calculator", {"expression": "6*7"}))
    assert not result.is_error and result.result == {"expression": "6*7", "result": 42}
    assert result.call_id == "c1" and result.name == "calculator"


def test_current_time_in_a_time_zone():
    result = run(toolset_for_tier("free"), ToolCall("c1", "current_time", {"timezone": "Asia/Tokyo"}))
    assert not result.is_error and result.result["iso"].endswith("+09:00")
    assert run(toolset_for_tier("free"), ToolCall("c2", "current_time", {})).result["iso"].endswith("+00:00")


@pytest.mark.parametrize(("call", "message"), [
    (ToolCall("c", "current_time", {"timezone": "Mars/Olympus"}), "Unknown time zone"),
    (ToolCall("c", "calculator", {}), "Invalid arguments"),
    (ToolCall("c", "calculator", {"expression": 5}), "Invalid arguments at expression"),
    (ToolCall("c", "calculator", {"expression": "1", "extra": 1}), "Invalid arguments"),
    (ToolCall("c", "calculator", {}, raw_arguments='{"expression": "1+'), "not a valid JSON"),
    (ToolCall("c", "nope", {}), "Unknown tool"),
    (ToolCall("c", "calculator", {"expression": "1/0"}), "Division by zero"),
])
def test_errors_become_tool_results(call, message):
    result = run(toolset_for_tier("pro"), call)
    assert result.is_error and message in result.result["error"]


def test_a_slow_or_crashing_tool_is_an_error_not_a_crash(monkeypatch):
    async def slow(**kwargs):
        await asyncio.sleep(5)

    async def crash(**kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(tools, "TOOL_TIMEOUT", 0.05)
    toolset = ToolSet([Tool("slow", "", {"type": "object"}, slow), Tool("crash", "", {"type": "object"}, crash)])
    assert "longer than" in run(toolset, ToolCall("c", "slow", {})).result["error"]
    assert "KeyError" in run(toolset, ToolCall("c", "crash", {})).result["error"]


def test_tools_are_offered_by_tier(monkeypatch):
    async def secret(**kwargs):
        return "s"

    monkeypatch.setitem(tools.TOOLS, "enterprise_only", Tool("enterprise_only", "", {"type": "object"}, secret,
                                                            tiers=("enterprise",)))
    assert "enterprise_only" in toolset_for_tier("enterprise")
    assert "enterprise_only" not in toolset_for_tier("free")
    assert {"calculator", "current_time"} <= set(toolset_for_tier("free").names)
    assert [s.name for s in toolset_for_tier("free").specs()] == toolset_for_tier("free").names
