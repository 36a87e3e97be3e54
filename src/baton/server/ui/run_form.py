"""The Run form of a flow, generated from the parameters schema recorded at registration, and its reading.

Each property becomes one input by its JSON type: text for strings, a number input for integers and numbers, a
checkbox for booleans, a select for an ``enum``, and a JSON text area for arrays, objects and anything the schema
does not say plainly. Reading the form turns each input back into a typed value and says, per field, what is
wrong; the server then checks the parameters as it does for REST (``models.parameters``), and its message is shown
on the form too. Stored schemas may be of any shape (flows registered before the meta-schema check): every part is
read defensively, as in ``models.parameters``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The form's own fields (beside one per parameter, prefixed "p."): never a parameter's name.
PREFIX = "p."
MAX_TEXT = 100_000


@dataclass(frozen=True)
class FormField:
    name: str
    kind: str  # string | integer | number | boolean | enum | json
    required: bool
    title: str
    description: str
    default: str  # the input's initial text ("" for none); booleans: "true" | "false"
    choices: tuple[str, ...] = ()
    nullable: bool = False

    @property
    def input_name(self) -> str:
        return PREFIX + self.name


def _kind(spec: Mapping[str, Any]) -> tuple[str, bool]:
    """The input kind of a property, and whether it accepts null."""
    if isinstance(spec.get("enum"), list) and spec["enum"] and all(isinstance(v, str) for v in spec["enum"]):
        return "enum", False
    kinds = spec.get("type")
    options = spec.get("anyOf")
    if kinds is None and isinstance(options, list):
        kinds = [o.get("type") for o in options if isinstance(o, dict)]
    names = (
        [kinds]
        if isinstance(kinds, str)
        else [k for k in kinds if isinstance(k, str)]
        if isinstance(kinds, list)
        else []
    )
    nullable = "null" in names
    plain = [name for name in names if name != "null"]
    if len(plain) == 1 and plain[0] in ("string", "integer", "number", "boolean"):
        return plain[0], nullable
    return "json", nullable


def _default_text(kind: str, spec: Mapping[str, Any]) -> str:
    if "default" not in spec:
        return "false" if kind == "boolean" else ""
    value = spec["default"]
    if kind == "boolean":
        return "true" if value is True else "false"
    if kind in ("string", "enum") and isinstance(value, str):
        return value
    if kind in ("integer", "number") and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, indent=2)


def fields(schema: Any) -> list[FormField]:
    """One field per property of ``schema``, in the schema's order."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return []
    required = schema.get("required")
    required_names = {name for name in required if isinstance(name, str)} if isinstance(required, list) else set()
    result = []
    for name, spec in schema["properties"].items():
        if not isinstance(name, str) or not isinstance(spec, dict):
            continue
        kind, nullable = _kind(spec)
        title = spec.get("title") if isinstance(spec.get("title"), str) else name
        description = spec.get("description") if isinstance(spec.get("description"), str) else ""
        choices = tuple(spec["enum"]) if kind == "enum" else ()
        result.append(
            FormField(
                name=name,
                kind=kind,
                required=name in required_names and "default" not in spec,
                title=str(title)[:200],
                description=str(description)[:1000],
                default=_default_text(kind, spec),
                choices=choices,
                nullable=nullable,
            )
        )
    return result


def _value(field: FormField, text: str) -> Any:
    """The typed value of one input; raises ValueError with what to fix."""
    if field.kind == "boolean":
        return text == "true"
    if field.kind in ("string", "enum"):
        if field.kind == "enum" and text not in field.choices:
            raise ValueError(f"choose one of {', '.join(field.choices)}")
        return text
    stripped = text.strip()
    if field.kind == "integer":
        try:
            return int(stripped)
        except ValueError:
            raise ValueError(f"{stripped[:40]!r} is not a whole number") from None
    if field.kind == "number":
        try:
            number = float(stripped)
        except ValueError:
            raise ValueError(f"{stripped[:40]!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError("give a finite number")
        return int(number) if number.is_integer() and "." not in stripped and "e" not in stripped.lower() else number
    try:
        return json.loads(stripped, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: not a parameter anyone means
        raise ValueError("nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read(form_fields: list[FormField], form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The parameters the form gives, and the problem of each field that has one (by parameter name).

    An empty optional input is left out (the flow's default applies); an empty required one is a problem.
    """
    parameters: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in form_fields:
        text = form.get(field.input_name, "")
        if len(text) > MAX_TEXT:
            problems[field.name] = f"longer than {MAX_TEXT} characters"
            continue
        if field.kind != "boolean" and text.strip() == "":
            if field.required and field.nullable:
                parameters[field.name] = None  # a required `int | None`: empty is its None
            elif field.required:
                problems[field.name] = "required"
            continue
        try:
            parameters[field.name] = _value(field, text)
        except ValueError as exc:
            problems[field.name] = str(exc)
    return parameters, problems
