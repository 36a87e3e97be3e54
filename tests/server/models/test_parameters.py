"""The server's parameter check against a flow's JSON schema (what it can tell without importing user code)."""

from __future__ import annotations

from typing import Any

import pytest

from baton.server.models.errors import InvalidRequest
from baton.server.models.parameters import check_parameters

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
        "items": {"type": "array"},
        "options": {"type": "object"},
        "maybe": {"type": ["string", "null"]},
        "ref": {"$ref": "#/definitions/Thing"},
    },
    "required": ["name"],
}


@pytest.mark.parametrize(
    "parameters",
    [
        {"name": "a"},
        {"name": "a", "count": 3, "ratio": 0.5, "flag": False, "items": [1], "options": {"k": 1}},
        {"name": "a", "ratio": 2},  # an integer is a number
        {"name": "a", "maybe": None},
        {"name": "a", "ref": {"anything": True}},  # not plainly typed: left to the flow-run process
    ],
)
def test_fitting_parameters_pass(parameters: dict[str, Any]) -> None:
    check_parameters(SCHEMA, parameters)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"name": "a", "count": True}, "parameter 'count' must be integer, got bool"),
        ({"name": "a", "ratio": False}, "parameter 'ratio' must be number, got bool"),
        ({"name": "a", "flag": 1}, "parameter 'flag' must be boolean, got int"),
        ({"name": "a", "options": []}, "parameter 'options' must be object, got list"),
        ({"name": "a", "maybe": 1}, "parameter 'maybe' must be string or null, got int"),
        ({"name": None}, "parameter 'name' must be string, got NoneType"),
        ({"count": 1}, "missing required parameter(s) name"),
    ],
)
def test_misfitting_parameters_are_refused_by_name(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        check_parameters(SCHEMA, parameters)
    assert str(excinfo.value) == message


def test_unknown_parameters_are_refused_unless_the_schema_allows_extra() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown parameter\(s\) a, b \(the flow takes: none\)"):
        check_parameters({"type": "object", "properties": {}}, {"b": 1, "a": 2})

    check_parameters({"type": "object", "properties": {}, "additionalProperties": True}, {"b": 1})


def test_empty_schema_checks_nothing() -> None:
    check_parameters({}, {"anything": object()})
