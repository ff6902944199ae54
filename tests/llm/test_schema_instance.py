"""The demo's JSON instance generator, checked with the jsonschema package as the reference validator."""

import enum
import uuid
from datetime import datetime
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from llm.providers.schema_instance import instance


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=2, max_length=40)
    postcode: str | None = None


class Person(BaseModel):
    id: uuid.UUID
    name: str
    age: int = Field(ge=0, le=150)
    score: float = Field(gt=0, lt=1)
    colour: Colour
    kind: Literal["user", "admin"]
    born: datetime
    addresses: list[Address] = Field(min_length=1, max_length=3)
    manager: "Person | None" = None


SCHEMAS = {
    "scalars": {"type": "object", "properties": {
        "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"}, "b": {"type": "boolean"},
        "z": {"type": "null"}}, "required": ["s", "i", "n", "b", "z"], "additionalProperties": False},
    "bounds": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 10, "maximum": 10},
        "b": {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 7},
        "c": {"type": "number", "maximum": -3, "exclusiveMaximum": -3, "multipleOf": 0.25},
        "d": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
        "e": {"type": "integer", "maximum": -5},
        "f": {"type": "integer", "multipleOf": 0.5, "minimum": 3}}},
    "strings": {"type": "object", "properties": {
        "short": {"type": "string", "maxLength": 3}, "long": {"type": "string", "minLength": 40},
        "when": {"type": "string", "format": "date-time"}, "day": {"type": "string", "format": "date"},
        "mail": {"type": "string", "format": "email"}, "const": {"const": "exactly"},
        "choice": {"enum": ["x", 2, None]}}},
    "arrays": {"type": "object", "properties": {
        "unique": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 5,
                   "uniqueItems": True},
        "unique_objects": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}},
                                                        "required": ["k"]}, "minItems": 3, "uniqueItems": True},
        "tuple": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": False},
        "empty": {"type": "array", "maxItems": 0},
        "nested": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2}}}},
    "combinators": {"type": "object", "properties": {
        "any": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 5}]},
        "one": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        "all": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                          {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
        "nullable": {"type": ["null", "string"]}}},
    "additional": {"type": "object", "required": ["x", "y"], "properties": {"x": {"type": "string"}},
                   "additionalProperties": {"type": "integer"}},
    "recursive": {"type": "object", "properties": {"value": {"type": "integer"},
                                                   "children": {"type": "array", "items": {"$ref": "#"}}},
                  "required": ["value", "children"]},
    "pydantic": Person.model_json_schema(),
    "top-level array": {"type": "array", "items": {"type": "string"}},
    "anything": {},
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_the_instance_is_valid_against_its_schema(name):
    schema = SCHEMAS[name]
    value = instance(schema)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def test_the_instance_is_the_same_every_time():
    assert instance(SCHEMAS["pydantic"]) == instance(SCHEMAS["pydantic"])


def test_a_pydantic_model_parses_it_back():
    person = Person.model_validate(instance(Person.model_json_schema()))
    assert 0 < person.score < 1 and 1 <= len(person.addresses) <= 3
