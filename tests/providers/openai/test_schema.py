"""clean_schema: which keywords each upstream kind loses, where they are recognised, and that input is untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tollway.providers.openai.schema import OPENAI_FORMATS, clean_schema

# Claude Code's WebFetch tool as it sends it.
WEBFETCH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "format": "uri", "description": "The URL to fetch content from"},
        "prompt": {"type": "string", "description": "The prompt to run on the fetched content"},
    },
    "required": ["url", "prompt"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}

# Every place a schema can nest, each holding keywords some mode drops.
NESTED: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "when": {"type": "string", "format": "date-time", "default": "now"},
        "site": {"type": "string", "format": "uri"},
        "tags": {"type": "array", "items": {"type": "string", "format": "hostname", "const": "x"}},
        "pair": {"type": "array", "prefixItems": [{"type": "string", "format": "uri-reference"}, {"type": "integer"}]},
        "choice": {"anyOf": [{"type": "string", "format": "ipv4"}, {"type": "number", "exclusiveMinimum": 0}]},
        "both": {"allOf": [{"$ref": "#/$defs/node"}], "oneOf": [{"type": "string", "format": "regex"}]},
        "extra": {"type": "object", "additionalProperties": {"type": "string", "format": "iri"}},
        "size": {"type": "integer", "format": "int32", "exclusiveMaximum": 10},
        "old": {"$ref": "#/definitions/legacy"},
    },
    "patternProperties": {"^x-": {"type": "string", "format": "uri"}},
    "propertyNames": {"pattern": "^[a-z]+$"},
    "if": {"properties": {"site": {"const": "a"}}},
    "then": {"required": ["when"]},
    "else": {"required": []},
    "not": {"required": ["never"]},
    "dependentSchemas": {"site": {"required": ["when"]}},
    "dependentRequired": {"site": ["when"]},
    "$defs": {"node": {"type": "string", "format": "uuid", "default": "u"}},
    "definitions": {"legacy": {"type": "string", "format": "uri"}},
    "additionalProperties": False,
}


def test_none_drops_only_dollar_schema():
    out = clean_schema(NESTED, "none")
    expected = copy.deepcopy(NESTED)
    del expected["$schema"]
    assert out == expected


def test_none_drops_nested_dollar_schema_too():
    schema = {"type": "object", "properties": {"a": {"$schema": "x", "type": "string"}}}
    assert clean_schema(schema, "none") == {"type": "object", "properties": {"a": {"type": "string"}}}


def test_openai_webfetch_loses_uri_format():
    assert clean_schema(WEBFETCH, "openai") == {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "The URL to fetch content from"},
            "prompt": {"type": "string", "description": "The prompt to run on the fetched content"},
        },
        "required": ["url", "prompt"],
        "additionalProperties": False,
    }


def test_openai_everywhere():
    out = clean_schema(NESTED, "openai")
    assert out == {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time", "default": "now"},
            "site": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string", "format": "hostname", "const": "x"}},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
            "choice": {"anyOf": [{"type": "string", "format": "ipv4"}, {"type": "number", "exclusiveMinimum": 0}]},
            "both": {"allOf": [{"$ref": "#/$defs/node"}], "oneOf": [{"type": "string"}]},
            "extra": {"type": "object", "additionalProperties": {"type": "string"}},
            "size": {"type": "integer", "exclusiveMaximum": 10},
            "old": {"$ref": "#/definitions/legacy"},
        },
        "$defs": {"node": {"type": "string", "format": "uuid", "default": "u"}},
        "definitions": {"legacy": {"type": "string"}},
        "additionalProperties": False,
    }


@pytest.mark.parametrize("fmt", sorted(OPENAI_FORMATS))
def test_openai_keeps_allowed_formats(fmt: str) -> None:
    assert clean_schema({"type": "string", "format": fmt}, "openai") == {"type": "string", "format": fmt}


@pytest.mark.parametrize("fmt", ["uri", "uri-reference", "regex", "int64", "binary", "password"])
def test_openai_drops_other_formats(fmt: str) -> None:
    assert clean_schema({"type": "string", "format": fmt}, "openai") == {"type": "string"}


def test_gemini_everywhere():
    out = clean_schema(NESTED, "gemini")
    assert out == {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "site": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
            "choice": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "both": {"allOf": [{"$ref": "#/$defs/node"}], "oneOf": [{"type": "string"}]},
            "extra": {"type": "object"},
            "size": {"type": "integer", "format": "int32"},
            "old": {"$ref": "#/definitions/legacy"},
        },
        "patternProperties": {"^x-": {"type": "string"}},
        "propertyNames": {"pattern": "^[a-z]+$"},
        "if": {"properties": {"site": {}}},
        "then": {"required": ["when"]},
        "else": {"required": []},
        "not": {"required": ["never"]},
        "dependentSchemas": {"site": {"required": ["when"]}},
        "dependentRequired": {"site": ["when"]},
        "$defs": {"node": {"type": "string"}},
        "definitions": {"legacy": {"type": "string"}},
    }


def test_gemini_keeps_enum_format_and_non_string_formats():
    assert clean_schema({"type": "string", "format": "enum", "enum": ["a"]}, "gemini") == {
        "type": "string", "format": "enum", "enum": ["a"]}
    assert clean_schema({"type": ["string", "null"], "format": "email"}, "gemini") == {"type": ["string", "null"]}
    assert clean_schema({"type": "number", "format": "float"}, "gemini") == {"type": "number", "format": "float"}


@pytest.mark.parametrize("mode", ["none", "openai", "gemini"])
def test_property_names_that_are_keywords_are_kept(mode: Any) -> None:
    # A tool may well have parameters called format, default, not or $schema.
    schema = {"type": "object", "properties": {
        "format": {"type": "string", "enum": ["json", "yaml"]},
        "default": {"type": "boolean"},
        "not": {"type": "string"},
        "const": {"type": "number"},
        "additionalProperties": {"type": "string"},
    }, "required": ["format"]}
    out = clean_schema(schema, mode)
    assert list(out["properties"]) == ["format", "default", "not", "const", "additionalProperties"]
    assert out["properties"]["format"] == {"type": "string", "enum": ["json", "yaml"]}


@pytest.mark.parametrize("mode", ["none", "openai", "gemini"])
def test_values_that_look_like_schemas_are_not_cleaned(mode: Any) -> None:
    # enum, default and examples hold data, not schemas.
    schema = {"type": "object", "enum": [{"format": "uri", "$schema": "x"}], "examples": [{"default": 1}]}
    out = clean_schema(schema, mode)
    assert out["enum"] == [{"format": "uri", "$schema": "x"}]
    assert out["examples"] == [{"default": 1}]


@pytest.mark.parametrize("mode", ["none", "openai", "gemini"])
def test_input_is_not_mutated_and_output_is_a_copy(mode: Any) -> None:
    before = copy.deepcopy(NESTED)
    out = clean_schema(NESTED, mode)
    assert before == NESTED
    out["properties"]["when"]["type"] = "changed"
    out["properties"]["tags"]["items"]["type"] = "changed"
    assert before == NESTED


@pytest.mark.parametrize("value", [True, False, None, 3, "string", ["a", {"format": "uri"}]])
def test_non_object_schemas_pass_through(value: Any) -> None:
    assert clean_schema(value, "openai") == value


def test_boolean_subschemas_survive():
    schema = {"type": "object", "properties": {"a": True}, "additionalProperties": False, "items": [True, False]}
    assert clean_schema(schema, "openai") == schema
