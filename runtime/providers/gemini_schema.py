"""JSON Schema -> the schema dialect Gemini accepts for function parameters.

Gemini's ``FunctionDeclaration.parameters`` is a subset of OpenAPI 3.0's schema object, and the API
refuses (400 INVALID_ARGUMENT) a declaration that uses anything else. Convoy's tool specs are JSON
Schema (pydantic's, for server tools; whatever a client sends, for client tools), so each one is
rewritten here, and the result always validates as Gemini's schema:

- **translated**: ``$ref`` (into ``$defs``/``definitions``) is inlined, a cycle becoming an open
  ``object``; ``anyOf``/``oneOf`` with ``{"type": "null"}`` becomes ``nullable``, the rest stays
  ``anyOf`` (``oneOf`` as ``anyOf``); ``allOf`` of one schema is that schema; ``type: [T, "null"]`` is
  ``T`` + ``nullable``; ``const`` is a one-value ``enum``; an ``enum`` of other values than strings
  (which Gemini refuses) moves into the description; ``required`` keeps only declared properties;
- **dropped**: every other keyword (``additionalProperties``, ``$schema``, ``$id``, ``examples``,
  ``exclusiveMinimum``/``Maximum``, ``multipleOf``, ``not``, ``if``/``then``/``else``,
  ``patternProperties``, ``allOf`` of several, ``uniqueItems``, ...) and a ``format`` Gemini does
  not know (it takes ``enum`` and ``date-time`` for strings, ``int32``/``int64``/``float``/``double``
  for numbers);
- an ``object`` without properties keeps no ``properties`` key (Gemini refuses an empty one), and a
  function whose parameters have none is declared without ``parameters``.
"""

from __future__ import annotations

import json
from typing import Any

# Keywords Gemini's Schema knows that are copied as they are (beside type, properties, items,
# anyOf, enum, format, nullable and required, which are rewritten).
_KEPT = (
    "title", "description", "default", "example",
    "minimum", "maximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "minProperties", "maxProperties", "propertyOrdering",
)  # fmt: skip
_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
_FORMATS = {"string": {"enum", "date-time"}, "number": {"float", "double"}, "integer": {"int32", "int64"}}
_MAX_DEPTH = 32  # deeper schemas (or $ref cycles) end in an open object


def function_parameters(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``parameters`` of a function declaration, or None when the function takes none."""
    if not schema:
        return None
    converted = _Converter(schema).convert(schema, 0)
    return converted if converted.get("properties") else None


class _Converter:
    def __init__(self, root: dict[str, Any]) -> None:
        self._defs: dict[str, Any] = {**(root.get("definitions") or {}), **(root.get("$defs") or {})}
        self._resolving: list[str] = []

    def convert(self, schema: Any, depth: int) -> dict[str, Any]:
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return {"type": "object"}
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self._ref(ref, schema, depth)
        schema = self._merge_all_of(schema)
        out: dict[str, Any] = {k: schema[k] for k in _KEPT if k in schema}
        nullable = bool(schema.get("nullable"))
        kind = schema.get("type")
        if isinstance(kind, list):
            nullable = nullable or "null" in kind
            kinds = [k for k in kind if k in _TYPES]
            kind = kinds[0] if len(kinds) == 1 else None
            if len(kinds) > 1:
                out["anyOf"] = [{"type": k} for k in kinds]
        if kind in _TYPES:
            out["type"] = kind
        variants = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(variants, list):
            real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            nullable = nullable or len(real) < len(variants)
            if len(real) == 1:
                for key, value in self.convert(real[0], depth + 1).items():
                    out.setdefault(key, value)
            elif real:
                out["anyOf"] = [self.convert(v, depth + 1) for v in real]
        if nullable:
            out["nullable"] = True
        self._enum(schema, out)
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
            out["format"] = fmt
        if out.get("type") == "array" or "items" in schema:
            out["items"] = self.convert(schema.get("items"), depth + 1) if isinstance(schema.get("items"), dict) else {"type": "string"}
        properties = schema.get("properties")
        if isinstance(properties, dict) and properties:
            out["properties"] = {str(name): self.convert(value, depth + 1) for name, value in properties.items()}
            required = [r for r in schema.get("required") or () if r in out["properties"]]
            if required:
                out["required"] = required
        if "type" not in out and "anyOf" not in out:
            out["type"] = "object" if "properties" in out else "string"
        return out

    def _ref(self, ref: str, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        name = ref.rsplit("/", 1)[-1]
        target = self._defs.get(name)
        if target is None or name in self._resolving:
            return {"type": "object", **({"description": schema["description"]} if "description" in schema else {})}
        self._resolving.append(name)
        try:
            resolved = self.convert(target, depth + 1)
        finally:
            self._resolving.pop()
        for key in ("description", "title", "default"):  # siblings of $ref refine the target
            if key in schema:
                resolved[key] = schema[key]
        return resolved

    @staticmethod
    def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
        parts = schema.get("allOf")
        if isinstance(parts, list) and len(parts) == 1 and isinstance(parts[0], dict):
            return {**{k: v for k, v in schema.items() if k != "allOf"}, **parts[0]}
        return schema

    @staticmethod
    def _enum(schema: dict[str, Any], out: dict[str, Any]) -> None:
        values = schema.get("enum")
        if "const" in schema:
            values = [schema["const"]]
        if not isinstance(values, list) or not values:
            return
        if all(isinstance(v, str) for v in values):
            out["enum"] = list(values)
            out.setdefault("type", "string")
            return
        allowed = ", ".join(json.dumps(v) for v in values)
        out["description"] = f"{out['description']} (one of: {allowed})" if out.get("description") else f"One of: {allowed}"
