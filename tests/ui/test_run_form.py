"""The Run form built from a flow's parameters schema (``run_form.fields``) and read back (``run_form.read``)."""

from __future__ import annotations

from typing import Any

import pytest

from baton.server.ui import run_form
from baton.server.ui.run_form import FormField, fields, read


def one(spec: dict[str, Any], required: bool = False) -> FormField:
    schema = {"type": "object", "properties": {"x": spec}, "required": ["x"] if required else []}
    (field,) = fields(schema)
    return field


@pytest.mark.parametrize(
    ("spec", "kind", "nullable"),
    [
        ({"type": "string"}, "string", False),
        ({"type": "integer"}, "integer", False),
        ({"type": "number"}, "number", False),
        ({"type": "boolean"}, "boolean", False),
        ({"type": "string", "enum": ["a", "b"]}, "enum", False),
        ({"enum": ["a", 1]}, "json", False),
        ({"enum": []}, "json", False),
        ({"type": "array", "items": {"type": "string"}}, "json", False),
        ({"type": "object"}, "json", False),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "integer", True),
        ({"type": ["string", "null"]}, "string", True),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "json", False),
        ({"anyOf": "nonsense"}, "json", False),
        ({"type": 7}, "json", False),
        ({"type": ["null"]}, "json", True),
        ({"$ref": "#/definitions/x"}, "json", False),
        ({}, "json", False),
    ],
)
def test_each_schema_type_gets_its_input_kind(spec: dict[str, Any], kind: str, nullable: bool) -> None:
    field = one(spec)

    assert (field.kind, field.nullable) == (kind, nullable)
    assert field.input_name == "p.x"


@pytest.mark.parametrize(
    "schema",
    [None, "string", 42, [], {}, {"properties": []}, {"properties": {"x": "string", 3: {}}}, {"type": "object"}],
)
def test_garbage_schemas_give_no_fields(schema: Any) -> None:
    assert fields(schema) == []


def test_fields_keep_order_titles_descriptions_and_required() -> None:
    schema = {
        "type": "object",
        "properties": {
            "b": {"type": "string", "title": "Bee", "description": "the b"},
            "a": {"type": "integer", "title": 5, "description": ["not text"]},
            "c": {"type": "integer", "default": 3},
        },
        "required": ["a", "c", 9],
    }

    b, a, c = fields(schema)

    assert [b.name, a.name, c.name] == ["b", "a", "c"]
    assert (b.title, b.description, b.required) == ("Bee", "the b", False)
    assert (a.title, a.description, a.required) == ("a", "", True)
    assert (c.required, c.default) == (False, "3")


@pytest.mark.parametrize(
    ("spec", "default"),
    [
        ({"type": "boolean"}, "false"),
        ({"type": "boolean", "default": True}, "true"),
        ({"type": "boolean", "default": "yes"}, "false"),
        ({"type": "string", "default": "hi"}, "hi"),
        ({"type": "string", "enum": ["a", "b"], "default": "b"}, "b"),
        ({"type": "number", "default": 1.5}, "1.5"),
        ({"type": "integer", "default": True}, "true"),
        ({"type": "array", "default": [1, 2]}, "[\n  1,\n  2\n]"),
        ({"type": "string"}, ""),
    ],
)
def test_defaults_become_the_inputs_initial_text(spec: dict[str, Any], default: str) -> None:
    assert one(spec).default == default


def test_long_titles_are_cut() -> None:
    field = one({"type": "string", "title": "t" * 1000, "description": "d" * 5000})

    assert (len(field.title), len(field.description)) == (200, 1000)


@pytest.mark.parametrize(
    ("spec", "text", "value"),
    [
        ({"type": "string"}, "  kept as sent ", "  kept as sent "),
        ({"type": "integer"}, " 42 ", 42),
        ({"type": "integer"}, "-7", -7),
        ({"type": "number"}, "2", 2),
        ({"type": "number"}, "2.0", 2.0),
        ({"type": "number"}, "1e3", 1000.0),
        ({"type": "boolean"}, "true", True),
        ({"type": "boolean"}, "", False),
        ({"type": "boolean"}, "on", False),
        ({"type": "string", "enum": ["a", "b"]}, "b", "b"),
        ({"type": "array"}, '["a", 1]', ["a", 1]),
        ({"type": "object"}, '{"k": {"n": null}}', {"k": {"n": None}}),
        ({}, "null", None),
    ],
)
def test_good_values_are_read_as_their_type(spec: dict[str, Any], text: str, value: Any) -> None:
    parameters, problems = read([one(spec)], {"p.x": text})

    assert problems == {}
    assert parameters == {"x": value}
    assert type(parameters["x"]) is type(value)


@pytest.mark.parametrize("spec", [{"type": "string"}, {"type": "integer"}, {"type": "object"}, {"enum": ["a"]}])
def test_empty_optional_inputs_are_left_out(spec: dict[str, Any]) -> None:
    assert read([one(spec)], {"p.x": "  "}) == ({}, {})
    assert read([one(spec)], {}) == ({}, {})


@pytest.mark.parametrize("spec", [{"type": "string"}, {"type": "integer"}, {"type": "array"}])
def test_empty_required_inputs_are_a_problem(spec: dict[str, Any]) -> None:
    assert read([one(spec, required=True)], {"p.x": ""}) == ({}, {"x": "required"})


def test_an_unticked_required_boolean_is_false() -> None:
    assert read([one({"type": "boolean"}, required=True)], {}) == ({"x": False}, {})


@pytest.mark.parametrize(
    ("spec", "text", "problem"),
    [
        ({"type": "integer"}, "abc", "is not a whole number"),
        ({"type": "integer"}, "1.5", "is not a whole number"),
        ({"type": "integer"}, "1e3", "is not a whole number"),
        ({"type": "number"}, "one", "is not a number"),
        ({"type": "number"}, "nan", "give a finite number"),
        ({"type": "number"}, "-inf", "give a finite number"),
        ({"type": "number"}, "1e999", "give a finite number"),
        ({"type": "string", "enum": ["a", "b"]}, "c", "choose one of a, b"),
        ({"type": "array"}, "[1,", "not valid JSON"),
        ({"type": "array"}, "NaN", "not valid JSON"),
        ({"type": "object"}, '{"x": Infinity}', "not valid JSON"),
        ({"type": "object"}, "{'single': 1}", "not valid JSON"),
        ({"type": "string"}, "x" * (run_form.MAX_TEXT + 1), "longer than"),
    ],
)
def test_bad_values_are_problems_of_their_field(spec: dict[str, Any], text: str, problem: str) -> None:
    parameters, problems = read([one(spec)], {"p.x": text})

    assert parameters == {}
    assert problem in problems["x"]
    assert len(problems["x"]) < 200


def test_each_field_reports_its_own_problem_and_the_rest_are_read() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "s": {"type": "string"}, "j": {"type": "array"}},
        "required": ["s"],
    }

    parameters, problems = read(fields(schema), {"p.n": "x", "p.j": "[1]", "csrf_token": "t", "n": "5"})

    assert parameters == {"j": [1]}
    assert set(problems) == {"n", "s"}


def test_form_fields_that_are_not_parameters_are_ignored() -> None:
    parameters, problems = read(fields({"properties": {"a": {"type": "string"}}}), {"p.b": "x", "labels": "l"})

    assert (parameters, problems) == ({}, {})


def test_an_empty_required_nullable_input_is_null() -> None:
    field = one({"anyOf": [{"type": "integer"}, {"type": "null"}]}, required=True)

    assert read([field], {"p.x": ""}) == ({"x": None}, {})
