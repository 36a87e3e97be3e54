"""Flow parameters: a pydantic model built from the flow function's signature and type hints.

Fields are named ``p0, p1, ...`` with the parameter's name as alias, so that any parameter name works
(``json``, ``copy`` or ``_private`` would clash with pydantic's own names otherwise).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from baton.exceptions import FlowLoadError, ParameterValidationError

_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_by_alias=True, validate_by_name=False)
_UNSUPPORTED_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class _LenientJsonSchema(GenerateJsonSchema):
    """A parameter of a type JSON schema cannot describe gets ``{}`` (anything) instead of an error."""

    def handle_invalid_for_json_schema(self, schema: core_schema.CoreSchema, error_info: str) -> JsonSchemaValue:
        return {}

    def emit_warning(self, kind: Any, detail: str) -> None:
        # e.g. a default that JSON cannot hold: the schema describes the flow, it is not worth a warning.
        return None


def check_signature(fn: Callable[..., Any]) -> None:
    """Refuse ``*args`` and ``**kwargs``: a flow's parameters are named values a run can be created with."""
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind in _UNSUPPORTED_KINDS:
            raise TypeError(
                f"flow function {fn.__name__!r} takes {parameter}: flow parameters must be named (no *args or **kwargs)"
            )


class Parameters:
    """Validates the parameters of one flow function and describes them as a JSON schema."""

    def __init__(self, fn: Callable[..., Any], flow_name: str) -> None:
        self._fn = fn
        self._flow_name = flow_name
        self._signature = inspect.signature(fn)
        self._model_cache: type[BaseModel] | None = None

    @property
    def _model(self) -> type[BaseModel]:
        # Built on first use, not at decoration: a type hint may name a class defined later in the module.
        if self._model_cache is None:
            self._model_cache = self._build_model()
        return self._model_cache

    def check(self) -> None:
        """Resolve the type hints now rather than at the first run.

        Raises:
            FlowLoadError: a parameter's type hint cannot be resolved.
        """
        _ = self._model  # built now for its errors; kept for the runs

    def _build_model(self) -> type[BaseModel]:
        hints = _type_hints(self._fn, self._flow_name)
        fields: dict[str, Any] = {}
        for index, parameter in enumerate(self._signature.parameters.values()):
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            annotation = hints.get(parameter.name, Any)
            fields[f"p{index}"] = (annotation, Field(default=default, alias=parameter.name))
        return create_model(f"{self._flow_name}_parameters", __config__=_CONFIG, **fields)

    def json_schema(self) -> dict[str, Any]:
        """``{"type": "object", "properties": {...}, "required": [...]}`` as pydantic generates it."""
        schema = self._model.model_json_schema(schema_generator=_LenientJsonSchema)
        schema.setdefault("required", [])
        return schema

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return the parameters converted to their hinted types, defaults filled in.

        Raises:
            ParameterValidationError: a value does not match its type hint, a required parameter is missing
                or an unknown one is given; the message lists every problem.
        """
        try:
            model = self._model.model_validate(dict(values))
        except ValidationError as exc:
            problems = "; ".join(_describe(error) for error in exc.errors(include_url=False))
            raise ParameterValidationError(f"invalid parameters for flow {self._flow_name!r}: {problems}") from None
        # getattr, not model_dump: a parameter typed as a pydantic model must stay that model.
        return {
            parameter.name: getattr(model, f"p{index}")
            for index, parameter in enumerate(self._signature.parameters.values())
        }

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map a direct call's arguments to parameter names, then validate them."""
        try:
            # bind_partial: a missing parameter is reported by validation, as for a run's parameters.
            bound = self._signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise ParameterValidationError(f"invalid parameters for flow {self._flow_name!r}: {exc}") from None
        return self.validate(bound.arguments)

    def call(self, values: Mapping[str, Any]) -> Any:
        """Call the function with validated ``values`` (positional-only parameters passed by position)."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for parameter in self._signature.parameters.values():
            if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(values[parameter.name])
            else:
                kwargs[parameter.name] = values[parameter.name]
        return self._fn(*args, **kwargs)


def _type_hints(fn: Callable[..., Any], flow_name: str) -> dict[str, Any]:
    """The resolved type hints of the function's parameters (the return hint is not used, so never checked).

    A parameter hint that cannot be resolved (a typo, a name imported only under ``TYPE_CHECKING``, a class local
    to another function under ``from __future__ import annotations``) is an error, not ``Any``: silently
    accepting any value for ``count: itn`` would hide the mistake until a run got a string where it expected a
    number. The error comes when the parameters are first used, which for a flow file is ``baton register``
    (it builds the parameters' schema), so the author sees it before any run does.

    Raises:
        FlowLoadError: a parameter's hint cannot be resolved; the message names the flow, the parameter and the
            hint.
    """
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # NameError or TypeError from some hint: resolve them one by one to name the bad one
        namespace = getattr(fn, "__globals__", {})
        annotations = inspect.get_annotations(fn)
        annotations.pop("return", None)
        hints = {name: _resolve_one(flow_name, name, annotation, namespace) for name, annotation in annotations.items()}
    hints.pop("return", None)
    return hints


def _resolve_one(flow_name: str, name: str, annotation: Any, namespace: dict[str, Any]) -> Any:
    try:
        return typing.get_type_hints(_Holder(name, annotation), namespace, include_extras=True)[name]
    except Exception as exc:  # NameError, TypeError, SyntaxError from a string hint...
        raise FlowLoadError(
            f"flow {flow_name!r}: the type hint {inspect.formatannotation(annotation)} of parameter {name!r} "
            f"cannot be resolved ({type(exc).__name__}: {exc}); it must name something defined or imported at "
            "the top of the flow's module"
        ) from None


class _Holder:
    """An object with one annotation, for resolving annotations one at a time with ``typing.get_type_hints``."""

    def __init__(self, name: str, annotation: Any) -> None:
        self.__annotations__ = {name: annotation}


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "parameters"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown parameter"
    if error["type"] == "missing":
        return f"{location}: missing (required)"
    return f"{location}: {error['msg']} (got {error['input']!r:.100})"
