"""JSON Schema clean-up for upstreams whose validators accept only part of the standard.

Anthropic takes any JSON Schema as a tool's ``input_schema``; some OpenAI-compatible servers refuse a
whole request over one keyword in one tool. The modes:

* ``none``: drop only ``$schema`` (Groq and others refuse it; no server needs it).
* ``openai``: OpenAI's strict validator; ``format`` only from an allowlist (Claude Code's WebFetch has
  ``format: "uri"``, which OpenAI refuses), and no ``propertyNames``, ``patternProperties``,
  ``if``/``then``/``else``, ``not``, ``dependentSchemas``, ``dependentRequired``.
* ``gemini``: Gemini's subset; no ``additionalProperties``, ``default``, ``exclusiveMinimum``,
  ``exclusiveMaximum``, ``const``, and string ``format`` only ``enum`` or ``date-time``.

Keywords are only recognised where a schema is expected: a property *named* ``format`` or ``default``
is kept. A dropped keyword makes the schema looser, never stricter, so the model may be asked less
precisely but the request is not refused.
"""

from __future__ import annotations

from typing import Any

from tollway.upstream_options import SchemaCleaning

OPENAI_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
GEMINI_STRING_FORMATS = frozenset({"enum", "date-time"})

_DROPPED: dict[str, frozenset[str]] = {
    "none": frozenset({"$schema"}),
    "openai": frozenset({"$schema", "propertyNames", "patternProperties", "if", "then", "else", "not",
                         "dependentSchemas", "dependentRequired"}),
    "gemini": frozenset({"$schema", "additionalProperties", "default", "exclusiveMinimum", "exclusiveMaximum",
                         "const"}),
}

# Keywords whose value is a schema, a list of schemas, or a map of name to schema.
_ONE_SCHEMA = frozenset({"items", "additionalItems", "additionalProperties", "unevaluatedItems",
                         "unevaluatedProperties", "contains", "propertyNames", "not", "if", "then", "else"})
_SCHEMA_LIST = frozenset({"anyOf", "oneOf", "allOf", "prefixItems", "items"})
_SCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def clean_schema(schema: Any, mode: SchemaCleaning) -> Any:
    """A cleaned deep copy of ``schema`` for an upstream of the given kind; the input is not changed."""
    return _clean(schema, mode, _DROPPED[mode])


def _clean(schema: Any, mode: SchemaCleaning, dropped: frozenset[str]) -> Any:
    if not isinstance(schema, dict):
        # true/false schemas, or something that is not a schema at all: leave as it is.
        return _copy(schema)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in dropped or (key == "format" and not _format_kept(schema, value, mode)):
            continue
        if key in _SCHEMA_MAP and isinstance(value, dict):
            out[key] = {name: _clean(sub, mode, dropped) for name, sub in value.items()}
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [_clean(sub, mode, dropped) for sub in value]
        elif key in _ONE_SCHEMA and isinstance(value, dict):
            out[key] = _clean(value, mode, dropped)
        else:
            out[key] = _copy(value)
    return out


def _format_kept(schema: dict[str, Any], value: Any, mode: SchemaCleaning) -> bool:
    if mode == "openai":
        return value in OPENAI_FORMATS
    if mode == "gemini":
        kind = schema.get("type")
        is_string = kind is None or kind == "string" or (isinstance(kind, list) and "string" in kind)
        return not is_string or value in GEMINI_STRING_FORMATS
    return True


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
