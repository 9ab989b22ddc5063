"""The embedded server's grammars: an OpenAI `response_format` as the llguidance grammar that masks every
decoding step, and the schema closed so a small model cannot invent keys. Apart from the server and its engine
because it is pure schema handling, tested without a model."""

from __future__ import annotations

from typing import Any

# JSON escapes a reply may use: no \u (a small model spells garbage control characters with it), no \b \f \r.
_ESCAPES = 'nt"\\'


class BadRequest(ValueError):
    """A request the server cannot serve (answered 400, like OpenAI's `invalid_request_error`)."""


def grammar_for(response_format: dict | None) -> str | None:
    """The llguidance grammar for an OpenAI `response_format`; None for plain text."""
    from llguidance import LLMatcher

    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    # Compact JSON: a small model otherwise fills its budget with spaces.
    opts = {"whitespace_flexible": False, "json_allowed_escapes": _ESCAPES}
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=opts)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON object")
        grammar = LLMatcher.grammar_from_json_schema(closed(schema), defaults={**opts, "lenient": True})
        err = LLMatcher.validate_grammar(grammar)
        if err and not err.startswith("WARNING"):
            raise BadRequest(f"response_format.json_schema: {err}")
        return grammar
    raise BadRequest(f"response_format.type {kind!r} is not supported (json_schema, json_object, text)")


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists properties and says nothing about
    others: keys the schema does not name are ignored by a validator anyway, and a small model otherwise spends
    its budget inventing them."""
    if isinstance(schema, list):
        return [closed(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k in ("properties", "$defs", "definitions", "items", "anyOf", "oneOf", "allOf",
                                  "prefixItems") or isinstance(v, dict | list) else v for k, v in schema.items()}
    if "properties" in out and isinstance(out["properties"], dict):
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out
