"""Checks flow-run parameters against the JSON schema recorded at registration.

The server cannot import user code, so it checks what the schema can tell: unknown names, missing required
ones and the JSON type of each value. The flow-run process validates fully from the type hints.

Schemas are checked against the meta-schema at registration (``baton.schemas.json_schema``), but flows stored
before that check may hold anything: every part of a schema is read defensively here, and a part of the wrong
shape is ignored, never a 500. Nothing here evaluates a ``pattern`` or follows a ``$ref``, so no schema can make
this slow.
"""

from __future__ import annotations

from typing import Any

from baton.server.models.errors import InvalidRequest

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _accepted_types(spec: dict[str, Any]) -> list[str] | None:
    """The JSON types a property accepts, or None when the schema does not say plainly (anyOf, $ref...)."""
    if "type" in spec:
        kinds = spec["type"]
        if isinstance(kinds, str):
            return [kinds]
        return [kind for kind in kinds if isinstance(kind, str)] if isinstance(kinds, list) else None
    options = spec.get("anyOf")
    if isinstance(options, list) and all(isinstance(o, dict) and "type" in o for o in options):
        return [o["type"] for o in options if isinstance(o["type"], str)]
    return None


def _matches(value: Any, kind: str) -> bool:
    python_types = _JSON_TYPES.get(kind)
    if python_types is None:
        return True
    if kind in ("integer", "number") and isinstance(value, bool):
        return False  # JSON true is not a number
    return isinstance(value, python_types)


def check_parameters(schema: dict[str, Any], parameters: dict[str, Any]) -> None:
    """Raise InvalidRequest naming every problem with ``parameters``."""
    if not isinstance(schema, dict) or not schema:
        return
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    problems: list[str] = []
    unknown = sorted(set(parameters) - set(properties))
    if unknown and not schema.get("additionalProperties"):
        expected = ", ".join(sorted(properties)) or "none"
        problems.append(f"unknown parameter(s) {', '.join(unknown)} (the flow takes: {expected})")
    required = schema.get("required")
    required_names = {name for name in required if isinstance(name, str)} if isinstance(required, list) else set()
    missing = sorted(required_names - set(parameters))
    if missing:
        problems.append(f"missing required parameter(s) {', '.join(missing)}")
    for name, value in parameters.items():
        spec = properties.get(name)
        if not isinstance(spec, dict):
            continue
        kinds = _accepted_types(spec)
        if kinds and not any(_matches(value, kind) for kind in kinds):
            problems.append(f"parameter {name!r} must be {' or '.join(kinds)}, got {type(value).__name__}")
    if problems:
        raise InvalidRequest("; ".join(problems))
