"""A small, deterministic generator of JSON instances valid against a JSON schema (the demo model's
json_schema output and the arguments of the tool calls it is forced to make).

Covered: type (one or a list), object (properties — all of them — required, additionalProperties),
array (items, prefixItems, minItems/maxItems, uniqueItems), string (minLength/maxLength, enum, const,
the formats date-time/date/time/email/uri/uuid), number and integer (minimum/maximum, their exclusive
forms, multipleOf), boolean, null, enum, const, anyOf/oneOf (the first branch), allOf (merged), and
local `$ref`s ("#/$defs/...", "#/definitions/..."). Not covered: `pattern` (the string is not made
to match it), `not`, if/then/else, patternProperties, dependent schemas.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 6  # below this, recursive schemas get their shortest form (null branch, required only)

_FORMATS = {
    "date-time": "2026-01-01T12:00:00Z",
    "date": "2026-01-01",
    "time": "12:00:00Z",
    "email": "demo@example.com",
    "uri": "https://example.com/demo",
    "url": "https://example.com/demo",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def instance(schema: Any, *, name: str = "value") -> Any:
    """A JSON value valid against `schema` (the same value every time for the same schema)."""
    return _Generator(schema if isinstance(schema, dict) else {}).make(schema, name, 0, 0)


class _Generator:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, schema: Any, depth: int) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < MAX_DEPTH:
            schema = {**self.lookup(schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        if schema is True or schema is None:
            return {}
        if not isinstance(schema, dict):
            return {}
        if "allOf" in schema and isinstance(schema["allOf"], list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part, depth)
                for key, value in part.items():
                    if key == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **value}
                    elif key == "required":
                        merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                    else:
                        merged.setdefault(key, value)
            schema = merged
        return schema

    def lookup(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            return {}  # remote references are not followed
        node: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/") if ref not in ("#", "#/") else []:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def make(self, schema: Any, name: str, depth: int, index: int) -> Any:
        """`index` > 0 for the later items of an array: values vary with it (uniqueItems)."""
        schema = self.resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][index % len(schema["enum"])]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k != key}
                return self.make({**rest, **self.branch(branches, depth)}, name, depth, index)
        kind = self.kind(schema, depth)
        if kind == "object":
            return self.object(schema, depth, index)
        if kind == "array":
            return self.array(schema, name, depth)
        if kind == "string":
            return _string(schema, name, index)
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer", index)
        if kind == "boolean":
            return index % 2 == 0
        if kind == "null":
            return None
        return f"demo {name}"

    def branch(self, branches: list[Any], depth: int) -> dict[str, Any]:
        """The first branch that is not null — or, deep in a recursive schema, a null one if any."""
        resolved = [self.resolve(b, depth) for b in branches]
        nulls = [b for b in resolved if b.get("type") == "null"]
        if depth >= MAX_DEPTH and nulls:
            return nulls[0]
        return next((b for b in resolved if b.get("type") != "null"), resolved[0])

    @staticmethod
    def kind(schema: dict[str, Any], depth: int) -> str | None:
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)]
            if depth >= MAX_DEPTH and "null" in kinds:
                return "null"
            kind = next((k for k in kinds if k != "null"), kinds[0] if kinds else None)
        if kind is None:
            if "properties" in schema or "required" in schema:
                return "object"
            if "items" in schema or "prefixItems" in schema:
                return "array"
        return kind if isinstance(kind, str) else None

    def object(self, schema: dict[str, Any], depth: int, index: int) -> dict[str, Any]:
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        names = list(properties) if depth < MAX_DEPTH else [n for n in properties if n in required]
        out = {key: self.make(properties[key], key, depth + 1, index) for key in names}
        extra = schema.get("additionalProperties", True)
        for key in required:
            if key not in out:
                out[key] = self.make(extra if isinstance(extra, dict) else {}, key, depth + 1, index)
        return out

    def array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        items = schema.get("items")
        if isinstance(items, list):  # the older tuple form
            prefix, items = items, schema.get("additionalItems", {})
        lowest = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        count = max(lowest, len(prefix), 1 if depth < MAX_DEPTH else 0)
        if isinstance(schema.get("maxItems"), int):
            count = min(count, schema["maxItems"])
        if items is False:
            count = min(count, len(prefix))
        return [self.make(prefix[i] if i < len(prefix) else (items if isinstance(items, dict) else {}),
                          name, depth + 1, i) for i in range(count)]


def _string(schema: dict[str, Any], name: str, index: int) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    if text is None:
        text = f"{index + 1} demo {name}" if index else f"demo {name}"
    elif index and fmt == "uuid":
        text = text[: -len(str(index))] + str(index)
    lowest, highest = schema.get("minLength"), schema.get("maxLength")
    if isinstance(lowest, int) and len(text) < lowest:
        text += "x" * (lowest - len(text))
    if isinstance(highest, int) and len(text) > highest:
        text = text[:highest]
    return text


def _number(schema: dict[str, Any], integer: bool, index: int) -> int | float:
    """A value inside the bounds (inclusive or exclusive, drafts 4 and later), a multiple of multipleOf."""

    def given(key: str) -> float | None:
        value = schema.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    low, high = given("minimum"), given("maximum")
    low_open = high_open = False
    if schema.get("exclusiveMinimum") is True:  # draft 4: a flag on minimum
        low_open = low is not None
    elif given("exclusiveMinimum") is not None and (low is None or given("exclusiveMinimum") >= low):
        low, low_open = given("exclusiveMinimum"), True
    if schema.get("exclusiveMaximum") is True:
        high_open = high is not None
    elif given("exclusiveMaximum") is not None and (high is None or given("exclusiveMaximum") <= high):
        high, high_open = given("exclusiveMaximum"), True

    step = given("multipleOf")
    if step is not None and step <= 0:
        step = None
    if integer:
        step = _integral(step)
    if step is not None:
        if low is not None:  # the multiples of step from the lowest allowed one up
            first = math.ceil(low / step)
            if low_open and first * step <= low:
                first += 1
            value = (first + index) * step
            if high is not None and (value > high or (high_open and value >= high)):
                value = first * step
        elif high is not None:  # from the highest allowed one (or zero) down
            first = min(0, math.floor(high / step))
            if high_open and first * step >= high:
                first -= 1
            value = (first - index) * step
        else:
            value = index * step
        return int(value) if integer or float(value).is_integer() else value
    # a number without multipleOf: inside the interval, away from open ends
    if low is not None and high is not None:
        value = low if not low_open else (low + high) / 2
        if index:
            value += (high - value) * index / (index + 2)
    elif low is not None:
        value = low + (1 if low_open else 0) + index
    elif high is not None:
        value = min(0.0, high - 1 if high_open else high) - index
    else:
        value = float(index)
    return int(value) if float(value).is_integer() else value


def _integral(step: float | None) -> int:
    """The smallest integer step whose multiples are multiples of `step` (1 without one)."""
    if step is None:
        return 1
    for k in range(1, 1001):
        if float(step * k).is_integer():
            return int(step * k)
    return 1
