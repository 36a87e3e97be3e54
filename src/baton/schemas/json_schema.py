"""Checks a flow's ``parameters_schema`` when it is registered, so no stored schema can break run creation.

A malformed schema (``{"properties": "abc"}``, ``{"required": 5}``, ``{"type": 5}``) used to be stored and then made
every run creation of the flow a 500 (issue 8, item 4). Now a schema must be valid against its JSON Schema
meta-schema (2020-12 unless ``$schema`` names a known draft), and its references must stay inside the document:
the meta-schema check would otherwise fetch an unknown ``$schema`` over the network, and a validator given the
schema later could fetch a remote ``$ref``.
"""

from __future__ import annotations

from typing import Any

KNOWN_META_SCHEMAS = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-04/schema",
    }
)
_REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _pointer(path: list[str | int]) -> str:
    return "/" + "/".join(str(part) for part in path)


def _remote_reference(schema: dict[str, Any]) -> str | None:
    """The first reference in ``schema`` that does not point inside it (``#...``), as a problem, or None."""
    pending: list[tuple[Any, list[str | int]]] = [(schema, [])]
    while pending:
        item, path = pending.pop()
        if isinstance(item, dict):
            for keyword in _REFERENCE_KEYWORDS:
                target = item.get(keyword)
                if isinstance(target, str) and not target.startswith("#"):
                    return f"at {_pointer([*path, keyword])}: only references inside the schema (#/...) are allowed"
            pending.extend((value, [*path, key]) for key, value in item.items())
        elif isinstance(item, list):
            pending.extend((value, [*path, index]) for index, value in enumerate(item))
    return None


def json_schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not an acceptable parameters schema (with the JSON pointer of the problem), or None.

    ``{}`` (a flow without a schema) is accepted.
    """
    if not schema:
        return None
    declared = schema.get("$schema")
    if declared is not None and (not isinstance(declared, str) or declared not in KNOWN_META_SCHEMAS):
        known = ", ".join(sorted(KNOWN_META_SCHEMAS))
        return f"at /$schema: unknown meta-schema {str(declared)[:200]!r} (known: {known})"
    remote = _remote_reference(schema)
    if remote is not None:
        return remote
    import jsonschema_rs  # here, not at import: only registration needs it

    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        return f"at {_pointer(list(exc.instance_path))}: {exc.message[:500]}"
    except jsonschema_rs.ReferencingError as exc:  # unreachable past the $schema check; never a 500 if not
        return f"cannot resolve the meta-schema: {str(exc)[:500]}"
    return None
