"""``@flow``: a function whose runs Baton schedules, routes to agents and records.

Usage::

    from baton import flow, task

    @task
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    @flow(labels=["dev"])
    def hello(name: str = "world") -> str:
        return greet(name)

    hello(name="Ada")   # runs here and now, no server needed

The function's parameters are the flow's parameters, validated from its type hints. ``baton register`` sends
the flow to the API; an agent then runs it with ``python -m baton.engine``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

from baton.labels import normalize_labels
from baton.schemas.core import MAX_CONCURRENT_RUNS, MAX_FLOW_RETRIES, MAX_TIMEOUT_SECONDS
from baton.sdk.context import TaskRunReporter, current_reporter, reporting_to
from baton.sdk.executors import Executor, SequentialExecutor, from_spec
from baton.sdk.futures import submitting_to
from baton.sdk.parameters import Parameters, check_signature
from baton.sdk.run_configs import BaseRun
from baton.sdk.schedules import to_schedule
from baton.sdk.storage import BaseStorage, resolve_storage

P = ParamSpec("P")
R = TypeVar("R")

# The API's rule for names (baton.schemas.actions.NAME_FIELD), checked here so a bad name fails at decoration.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
_MAX_NAME_LENGTH = 200


def _check_name(name: str) -> str:
    if not (_NAME_RE.match(name) and len(name) <= _MAX_NAME_LENGTH):
        raise ValueError(
            f"invalid flow name {name!r}: start with a letter or digit, then letters, digits, spaces, "
            f"'_', '.' or '-' (at most {_MAX_NAME_LENGTH} characters)"
        )
    return name


def _check_timeout(seconds: int | None) -> int | None:
    return None if seconds is None else _check_int("timeout_seconds", seconds, 1, MAX_TIMEOUT_SECONDS)


def _check_int(what: str, value: int, low: int, high: int) -> int:
    # bool is an int: `timeout_seconds=True` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a whole number, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def _check_max_concurrent_runs(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"max_concurrent_runs must be a whole number, not {type(limit).__name__}")
    if limit is not None and not 1 <= limit <= MAX_CONCURRENT_RUNS:
        raise ValueError(f"max_concurrent_runs must be between 1 and {MAX_CONCURRENT_RUNS}, got {limit}")
    return limit


class Flow(Generic[P, R]):
    """A function wrapped by ``@flow``. Calling it runs the flow locally, in this process."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        labels: Iterable[str] | None = None,
        run_config: BaseRun | None = None,
        storage: str | BaseStorage | None = None,
        schedule: Any = None,
        timeout_seconds: int | None = None,
        retries: int = 0,
        retry_delay_seconds: int = 0,
        max_lateness_seconds: int | None = None,
        max_concurrent_runs: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        check_signature(fn)
        functools.update_wrapper(self, fn)  # first: it copies fn.__dict__, which must not hide our attributes
        self.fn = fn
        self.name = _check_name(name or fn.__name__)
        self.labels = normalize_labels(labels)
        if run_config is not None and not isinstance(run_config, BaseRun):
            raise TypeError(
                f"run_config must be a LocalRun, UniversalRun, DockerRun or KubernetesRun, "
                f"not {type(run_config).__name__}"
            )
        if run_config is not None:
            run_config.to_schema()  # validates its labels now rather than at registration
        self.run_config = run_config
        self.storage = resolve_storage(storage)
        self.schedule = to_schedule(schedule)  # its form is checked now: a bad schedule fails at decoration
        self.timeout_seconds = _check_timeout(timeout_seconds)
        self.retries = _check_int("retries", retries, 0, MAX_FLOW_RETRIES)
        self.retry_delay_seconds = _check_int("retry_delay_seconds", retry_delay_seconds, 0, MAX_TIMEOUT_SECONDS)
        self.max_lateness_seconds = (
            None
            if max_lateness_seconds is None
            else _check_int("max_lateness_seconds", max_lateness_seconds, 1, MAX_TIMEOUT_SECONDS)
        )
        self.max_concurrent_runs = _check_max_concurrent_runs(max_concurrent_runs)
        if executor is not None and not all(hasattr(executor, name) for name in ("start", "submit", "shutdown")):
            raise TypeError(
                f"executor must be a SequentialExecutor, ThreadExecutor, ..., not {type(executor).__name__}"
            )
        # An executor object holds a pool while a run uses it: each run (and each direct call) gets a fresh copy.
        self.executor = executor
        self.description = inspect.getdoc(fn)
        self.parameters = Parameters(fn, self.name)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r}, entrypoint={self.entrypoint!r})"

    @property
    def entrypoint(self) -> str:
        """The name of the function in its file; the engine finds the flow by it."""
        return self.fn.__name__

    def parameters_schema(self) -> dict[str, Any]:
        """The parameters as a JSON schema: ``{"type": "object", "properties": ..., "required": ...}``."""
        return self.parameters.json_schema()

    def validate_parameters(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``parameters`` converted to their hinted types, with defaults filled in.

        Raises:
            ParameterValidationError: a value has the wrong type, a required one is missing or one is unknown.
        """
        return self.parameters.validate(parameters)

    def run(
        self, parameters: Mapping[str, Any], reporter: TaskRunReporter | None = None, executor: str | None = None
    ) -> R:
        """Run the flow in this process with ``parameters`` (a mapping, e.g. a flow run's JSON parameters).

        Args:
            parameters: the values by parameter name; validated first.
            reporter: where task runs are recorded; default: the current one (nothing is recorded outside
                the engine).
            executor: the run's executor (a spec, ``executors.from_spec``), over the flow's.

        Raises:
            ParameterValidationError: the parameters do not match the function's signature.
        """
        values = self.validate_parameters(parameters)
        chosen = from_spec(executor) if executor else self._new_executor()
        with reporting_to(reporter or current_reporter()), submitting_to(chosen):
            result: R = self.parameters.call(values)
        return result

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        # Outside the engine the current reporter is the no-op one: tasks run with retries and timeouts, and
        # nothing is recorded.
        with submitting_to(self._new_executor()):
            result: R = self.parameters.call(self.parameters.bind(args, kwargs))
        return result

    def _new_executor(self) -> Executor:
        return SequentialExecutor() if self.executor is None else copy.copy(self.executor)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    labels: Iterable[str] | None = None,
    run_config: BaseRun | None = None,
    storage: str | BaseStorage | None = None,
    schedule: Any = None,
    timeout_seconds: int | None = None,
    retries: int = 0,
    retry_delay_seconds: int = 0,
    max_lateness_seconds: int | None = None,
    max_concurrent_runs: int | None = None,
    executor: Executor | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    labels: Iterable[str] | None = None,
    run_config: BaseRun | None = None,
    storage: str | BaseStorage | None = None,
    schedule: Any = None,
    timeout_seconds: int | None = None,
    retries: int = 0,
    retry_delay_seconds: int = 0,
    max_lateness_seconds: int | None = None,
    max_concurrent_runs: int | None = None,
    executor: Executor | None = None,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow; usable bare (``@flow``) or with arguments (``@flow(labels=["dev"])``).

    Args:
        fn: the function (when used bare).
        name: the flow's name on the server; default the function's name.
        labels: route the flow's runs to agents that have all of them (when its run config has none).
        run_config: how agents run it: ``LocalRun``, ``UniversalRun``, ``DockerRun`` or ``KubernetesRun``.
        storage: where agents find its code: ``"api"`` (default), ``"local"``, or a storage object.
        schedule: a ``CronSchedule``, ``IntervalSchedule`` or ``RRuleSchedule``, a list of them, or a cron string
            (``"0 9 * * *"``, UTC); an invalid one raises InvalidScheduleError (a ValueError) here.
        timeout_seconds: the agent kills a run still going after this long and fails it ("timed out after N s");
            an agent's ``--run-timeout`` applies when it is shorter.
        retries: a failed run (the flow raised, its deployment failed, its process or agent died, a timeout) is
            run again, as a new attempt of the same run, up to this many times (0-100).
        retry_delay_seconds: each retry is due this long after the failure.
        max_lateness_seconds: a run still waiting this long after it was due (e.g. after an outage) is skipped:
            Cancelled with a message, instead of starting late.
        max_concurrent_runs: at most this many runs of the flow (all versions of its name) are claimed or running at
            once; further runs wait in Scheduled. The latest registered version's value rules.
        executor: where tasks submitted with ``task.submit``/``task.map`` run: ``SequentialExecutor()`` (the
            default: at once, in the flow's thread) or ``ThreadExecutor(max_workers)`` (``baton.sdk.executors``).

    Returns:
        The :class:`Flow`, or a decorator that makes one.
    """

    def decorate(function: Callable[P, R]) -> Flow[P, R]:
        return Flow(
            function,
            name=name,
            labels=labels,
            run_config=run_config,
            storage=storage,
            schedule=schedule,
            timeout_seconds=timeout_seconds,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            max_lateness_seconds=max_lateness_seconds,
            max_concurrent_runs=max_concurrent_runs,
            executor=executor,
        )

    return decorate(fn) if fn is not None else decorate
