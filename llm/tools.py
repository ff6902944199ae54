"""Tools the models may call: a registry, the built-ins, and running one call safely.

A tool is a name, a description, a JSON schema of its arguments, an async callable and the tiers
that may use it. `ToolSet.run()` never raises: malformed JSON, arguments that fail the schema,
an unknown tool, a tool that fails or takes too long — each becomes a ToolResult with is_error=True,
which the tool loop hands back to the model.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import math
import operator
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from llm.types import ToolCall, ToolResult, ToolSpec

logger = logging.getLogger(__name__)

TOOL_TIMEOUT = 10.0


class ToolError(Exception):
    """A tool's own, user-readable failure (shown to the model as the tool's error)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Awaitable[Any]]
    tiers: tuple[str, ...] | None = None  # None: every tier

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


class ToolSet:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._validators = {
            tool.name: jsonschema.Draft202012Validator(tool.parameters) for tool in self._tools.values()
        }

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.spec for tool in self._tools.values())

    async def run(self, call: ToolCall) -> ToolResult:
        def failed(message: str) -> ToolResult:
            return ToolResult(call_id=call.id, name=call.name, result={"error": message}, is_error=True)

        tool = self._tools.get(call.name)
        if tool is None:
            return failed(f"Unknown tool “{call.name}”. Available: {', '.join(self._tools) or 'none'}.")
        if call.raw_arguments is not None:
            return failed("The arguments were not a valid JSON object: " + call.raw_arguments[:200])
        errors = sorted(self._validators[tool.name].iter_errors(call.arguments), key=lambda err: list(err.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path)
            return failed(f"Invalid arguments{' at ' + where if where else ''}: {errors[0].message}")
        try:
            async with asyncio.timeout(TOOL_TIMEOUT):
                result = await tool.func(**call.arguments)
        except ToolError as exc:
            return failed(str(exc))
        except TimeoutError:
            return failed(f"The tool took longer than {TOOL_TIMEOUT:g} s.")
        except Exception as exc:
            logger.warning("tool %s failed: %s", call.name, type(exc).__name__, exc_info=True)
            return failed(f"The tool failed ({type(exc).__name__}).")
        return ToolResult(call_id=call.id, name=call.name, result=result)


# --- the registry ----------------------------------------------------------------------------

TOOLS: dict[str, Tool] = {}


def tool_register(tool: Tool) -> Tool:
    TOOLS[tool.name] = tool
    return tool


def toolset_for_tier(tier_slug: str) -> ToolSet:
    return ToolSet(tool for tool in TOOLS.values() if tool.tiers is None or tier_slug in tool.tiers)


# --- calculator: a safe evaluator over the expression's syntax tree (no eval) ---------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "log": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp, "factorial": math.factorial,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
MAX_EXPRESSION = 500
MAX_MAGNITUDE = 10**100


def calculate(expression: str) -> int | float:
    if len(expression) > MAX_EXPRESSION:
        raise ToolError(f"The expression is longer than {MAX_EXPRESSION} characters.")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ToolError(f"Not a valid expression: {expression}")

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError("Only numbers are supported.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolError("The result is not a finite number.")
        if abs(value) > MAX_MAGNITUDE:
            raise ToolError("The result is too large.")
        return value

    def visit(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant):
            return check(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = visit(node.left), visit(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ToolError("The exponent is too large.")
            if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
                if left and right and math.log10(abs(left)) + math.log10(abs(right)) > 100:
                    raise ToolError("The result is too large.")
            try:
                return check(_BINARY[type(node.op)](left, right))
            except ZeroDivisionError:
                raise ToolError("Division by zero.")
            except OverflowError:
                raise ToolError("The result is too large.")
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return check(_UNARY[type(node.op)](visit(node.operand)))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and len(node.args) <= 4
        ):
            args = [visit(arg) for arg in node.args]
            if node.func.id == "factorial" and (not isinstance(args[0], int) or args[0] > 170):
                raise ToolError("factorial takes a whole number up to 170.")
            try:
                return check(_FUNCTIONS[node.func.id](*args))
            except (ValueError, TypeError, OverflowError) as exc:
                raise ToolError(f"{node.func.id}: {exc}")
        raise ToolError(f"Unsupported in an expression: {ast.unparse(node) if hasattr(ast, 'unparse') else node}")

    return visit(tree)


async def _calculator(expression: str) -> dict[str, Any]:
    value = calculate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return {"expression": expression, "result": value}


async def _current_time(timezone: str = "UTC") -> dict[str, Any]:
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"Unknown time zone “{timezone}”; use an IANA name such as Europe/Paris.")
    now = datetime.now(UTC).astimezone(zone)
    return {"timezone": timezone, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


tool_register(
    Tool(
        name="calculator",
        description="Evaluate an arithmetic expression exactly, e.g. 2*(3+4)**2 or sqrt(2). "
        "Supports + - * / // % **, parentheses, pi, e and sqrt, log, sin, cos, round, min, max.",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression to evaluate."}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        func=_calculator,
    )
)
tool_register(
    Tool(
        name="current_time",
        description="The current date and time in a time zone (IANA name such as Europe/Paris; default UTC).",
        parameters={
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "IANA time zone name.", "default": "UTC"}},
            "additionalProperties": False,
        },
        func=_current_time,
    )
)
