"""Request bodies are checked against a small JSON Schema subset (the same dicts go into the
OpenAPI document): object with properties/required/additionalProperties, string (minLength,
maxLength, enum, pattern), integer and number (minimum, maximum), boolean, array (items,
maxItems), and free-form object. Unknown fields and wrong types are refused, naming the field."""

from __future__ import annotations

import re
from typing import Any

from controller.errors import Invalid

Schema = dict[str, Any]


def obj(required: tuple[str, ...] = (), **props: Schema) -> Schema:
    s: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        s["required"] = list(required)
    return s


def string(min_len: int = 0, max_len: int = 1000, **extra: Any) -> Schema:
    return {"type": "string", "minLength": min_len, "maxLength": max_len, **extra}


def integer(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    s: Schema = {"type": "integer", **extra}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    return s


BOOLEAN: Schema = {"type": "boolean"}

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "an object", "array": "a list"}


def validate(value: Any, schema: Schema, path: str = "") -> Any:
    """Return ``value`` when it fits ``schema``; raise Invalid naming the first bad field."""
    t = schema.get("type")
    where = path or "body"
    if t == "object":
        if not isinstance(value, dict):
            raise Invalid(f"{where} must be {_TYPE_NAMES['object']}", field=path or None)
        props: dict[str, Schema] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise Invalid(f"{_join(path, name)} is required", field=_join(path, name))
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in props:
                    raise Invalid(f"unknown field {_join(path, name)!r}", field=_join(path, name))
        for name, v in value.items():
            if name in props:
                validate(v, props[name], _join(path, name))
        return value
    if t == "string":
        if not isinstance(value, str):
            raise Invalid(f"{where} must be {_TYPE_NAMES['string']}", field=path)
        if len(value) < schema.get("minLength", 0):
            raise Invalid(f"{where} must have at least {schema['minLength']} characters", field=path)
        if len(value) > schema.get("maxLength", 1_000_000):
            raise Invalid(f"{where} must have at most {schema['maxLength']} characters", field=path)
        if "enum" in schema and value not in schema["enum"]:
            raise Invalid(f"{where} must be one of: {', '.join(schema['enum'])}", field=path)
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            raise Invalid(f"{where} has the wrong form", field=path)
        return value
    if t in ("integer", "number"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if t == "number":
            ok = ok or isinstance(value, float)
        if not ok:
            raise Invalid(f"{where} must be {_TYPE_NAMES[t]}", field=path)
        if "minimum" in schema and value < schema["minimum"]:
            raise Invalid(f"{where} must be at least {schema['minimum']}", field=path)
        if "maximum" in schema and value > schema["maximum"]:
            raise Invalid(f"{where} must be at most {schema['maximum']}", field=path)
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise Invalid(f"{where} must be {_TYPE_NAMES['boolean']}", field=path)
        return value
    if t == "array":
        if not isinstance(value, list):
            raise Invalid(f"{where} must be {_TYPE_NAMES['array']}", field=path)
        if len(value) > schema.get("maxItems", 10_000):
            raise Invalid(f"{where} may have at most {schema['maxItems']} items", field=path)
        for i, item in enumerate(value):
            validate(item, schema.get("items", {}), f"{path}[{i}]")
        return value
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
