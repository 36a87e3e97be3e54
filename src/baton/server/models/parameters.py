"""Checks flow-run parameters against the JSON schema recorded at registration.

The server cannot import user code, so it checks what the schema can tell: unknown names, missing required
ones and the JSON type of each value. The flow-run process validates fully from the type hints.
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
        return [kinds] if isinstance(kinds, str) else list(kinds)
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
    properties: dict[str, Any] = schema.get("properties") or {}
    if not schema:
        return
    problems: list[str] = []
    unknown = sorted(set(parameters) - set(properties))
    if unknown and not schema.get("additionalProperties"):
        expected = ", ".join(sorted(properties)) or "none"
        problems.append(f"unknown parameter(s) {', '.join(unknown)} (the flow takes: {expected})")
    missing = sorted(set(schema.get("required") or []) - set(parameters))
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
