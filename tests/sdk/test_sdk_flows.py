from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from baton import Flow, LocalRun, flow, task
from baton.exceptions import FlowLoadError, InvalidLabelError, ParameterValidationError
from baton.sdk.storage import APIStorage, LocalStorage
from sdk.conftest import RecordingReporter


class Opaque:
    """A type JSON schema cannot describe."""


class Point(BaseModel):
    x: int
    y: int


def test_bare_flow_decorator_makes_a_flow_named_after_the_function() -> None:
    @flow
    def hello(name: str = "world") -> str:
        """Greets."""
        return f"hello {name}"

    assert isinstance(hello, Flow)
    assert (hello.name, hello.entrypoint, hello.description) == ("hello", "hello", "Greets.")
    assert hello.labels == []
    assert hello.storage == APIStorage()
    assert hello.run_config is None and hello.schedule is None


def test_flow_decorator_with_arguments_normalizes_labels_and_keeps_options() -> None:
    @flow(
        name="nightly etl",
        labels=["prod", "dev", "prod"],
        run_config=LocalRun(labels=["gpu"]),
        storage="local",
        schedule="0 9 * * *",
    )
    def etl() -> None:
        return None

    assert etl.name == "nightly etl"
    assert etl.entrypoint == "etl"
    assert etl.labels == ["dev", "prod"]
    assert etl.storage == LocalStorage()
    assert etl.schedule is not None
    assert etl.schedule.model_dump(mode="json")["clocks"][0] == {
        "type": "cron",
        "cron": "0 9 * * *",
        "timezone": "UTC",
        "parameter_defaults": {},
        "labels": [],
        "start_date": None,
        "end_date": None,
    }


def test_calling_a_flow_runs_its_tasks_locally_and_returns_the_result() -> None:
    calls: list[str] = []

    @task
    def greet(name: str) -> str:
        calls.append(name)
        return f"hello {name}"

    @task(retries=1)
    def shout(text: str) -> str:
        calls.append("shout")
        if calls.count("shout") == 1:
            raise RuntimeError("first attempt fails")
        return text.upper()

    @flow
    def hello(name: str = "world") -> str:
        return shout(greet(name))

    assert hello(name="ada") == "HELLO ADA"
    assert hello() == "HELLO WORLD"
    assert calls == ["ada", "shout", "shout", "world", "shout"]


def test_calling_a_flow_converts_parameters_to_their_type_hints() -> None:
    @flow
    def typed(count: int, point: Point, mode: Literal["fast", "slow"] = "fast") -> tuple[int, Point, str]:
        return count, point, mode

    count, point, mode = typed("3", {"x": 1, "y": "2"})  # type: ignore[arg-type]
    assert count == 3
    assert point == Point(x=1, y=2)
    assert mode == "fast"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda f: f(count="many", point={"x": 1, "y": 2}), r"count: Input should be a valid integer.*'many'"),
        (lambda f: f(point={"x": 1, "y": 2}), r"count: missing \(required\)"),
        (lambda f: f(count=1, point={"x": 1}), r"point\.y: missing"),
        (lambda f: f(count=1, point={"x": 1, "y": 2}, mode="medium"), r"mode: Input should be 'fast' or 'slow'"),
        (lambda f: f(1, {"x": 1, "y": 2}, "fast", "extra"), r"too many positional arguments"),
        (lambda f: f(count=1, point={"x": 1, "y": 2}, colour="red"), r"got an unexpected keyword argument 'colour'"),
    ],
)
def test_bad_parameters_raise_parameter_validation_error(call: object, expected: str) -> None:
    ran = []

    @flow
    def typed(count: int, point: Point, mode: Literal["fast", "slow"] = "fast") -> None:
        ran.append(1)

    with pytest.raises(ParameterValidationError, match=r"invalid parameters for flow 'typed': " + expected):
        call(typed)  # type: ignore[operator]
    assert ran == []


def test_run_validates_a_parameters_mapping_and_reports_unknown_ones(reporter: RecordingReporter) -> None:
    @task
    def square(x: int) -> int:
        return x * x

    @flow
    def squares(x: int = 2) -> int:
        return square(x)

    assert squares.run({"x": "4"}, reporter) == 16
    assert squares.run({}) == 4
    with pytest.raises(ParameterValidationError, match="colour: unknown parameter"):
        squares.run({"colour": "red"})
    assert list(reporter.names.values()) == ["square", "square"]


def test_parameter_names_that_clash_with_pydantic_names_work() -> None:
    @flow
    def odd_names(json: str, copy: int = 1, _private: bool = False) -> tuple[str, int, bool]:
        return json, copy, _private

    assert odd_names("x", copy="2", _private=True) == ("x", 2, True)  # type: ignore[arg-type]
    assert set(odd_names.parameters_schema()["properties"]) == {"json", "copy", "_private"}


def test_parameters_schema_describes_types_defaults_and_required_parameters() -> None:
    @flow
    def report(day: str, limit: int = 10, verbose: bool = False, unknown=None) -> None:  # type: ignore[no-untyped-def]
        return None

    schema = report.parameters_schema()
    assert schema["type"] == "object"
    assert schema["required"] == ["day"]
    assert schema["properties"]["day"]["type"] == "string"
    assert schema["properties"]["limit"] == {"default": 10, "title": "Limit", "type": "integer"}
    assert schema["properties"]["verbose"]["default"] is False
    assert "type" not in schema["properties"]["unknown"]  # no hint: any value


def test_a_flow_without_parameters_has_an_empty_schema_with_required_list() -> None:
    @flow
    def nothing() -> None:
        return None

    schema = nothing.parameters_schema()
    assert (schema["type"], schema["properties"], schema["required"]) == ("object", {}, [])


def test_a_parameter_of_a_type_json_schema_cannot_describe_gets_an_open_schema() -> None:
    @flow
    def opaque(thing: Opaque | None = None) -> Opaque | None:
        return thing

    assert opaque.parameters_schema()["properties"]["thing"]["default"] is None
    value = Opaque()
    assert opaque(value) is value
    with pytest.raises(ParameterValidationError, match="thing"):
        opaque("not opaque")  # type: ignore[arg-type]


def test_a_hint_that_cannot_be_resolved_is_an_error_naming_the_parameter_and_the_hint() -> None:
    class LocalOnly:  # under `from __future__ import annotations`, not resolvable from the module
        pass

    @flow
    def local(thing: LocalOnly, count: int = 1) -> int:
        return count

    message = (
        "flow 'local': the type hint 'LocalOnly' of parameter 'thing' cannot be resolved "
        "(NameError: name 'LocalOnly' is not defined); it must name something defined or imported at the top "
        "of the flow's module"
    )
    with pytest.raises(FlowLoadError) as caught:
        local.parameters_schema()
    assert str(caught.value) == message
    with pytest.raises(FlowLoadError, match="parameter 'thing'"):
        local(thing="anything", count=5)  # type: ignore[arg-type]


def test_a_return_hint_that_cannot_be_resolved_does_not_matter() -> None:
    @flow
    def returns_local(count: int = 1) -> NotDefinedAnywhere:  # type: ignore[name-defined]  # noqa: F821
        return count

    assert returns_local(count="2") == 2  # type: ignore[arg-type]
    assert returns_local.parameters_schema()["properties"]["count"]["type"] == "integer"


def test_star_args_are_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match=r"flow parameters must be named"):

        @flow
        def variadic(*names: str) -> None:
            return None


def test_invalid_flow_name_is_refused_at_decoration() -> None:
    with pytest.raises(ValueError, match="invalid flow name"):

        @flow(name="bad/name")
        def bad() -> None:
            return None


def test_invalid_label_is_refused_at_decoration() -> None:
    with pytest.raises(InvalidLabelError):

        @flow(labels=["has space"])
        def bad() -> None:
            return None


def test_run_config_must_be_a_run_config_object() -> None:
    with pytest.raises(TypeError, match="run_config must be"):

        @flow(run_config={"type": "local"})  # type: ignore[call-overload, untyped-decorator]
        def bad() -> None:
            return None


def test_unknown_storage_name_is_refused() -> None:
    from baton.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown storage 'ftp'"):

        @flow(storage="ftp")
        def bad() -> None:
            return None


def test_positional_only_parameters_are_passed_by_position() -> None:
    @flow
    def pos(a: int, /, b: int = 2) -> int:
        return a * 10 + b

    assert pos(1) == 12
    assert pos.run({"a": "3", "b": 4}) == 34


def test_a_flow_raises_what_its_code_raises() -> None:
    @flow
    def failing() -> None:
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        failing()
