"""What a running flow knows about its surroundings, held in context variables.

The engine sets a reporter that records task runs through the API; a flow called directly in a script gets the
no-op reporter, so the same code runs with or without a server. Context variables (not globals) follow the
code into the worker threads that run tasks with a timeout, because those threads start from a copied context.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from baton.schemas.states import TaskRunState


class FlowRunCancelled(BaseException):
    """Raised in the flow's thread when its run is cancelled.

    A ``BaseException`` on purpose: flow code that catches ``Exception`` must not swallow a cancellation.
    """


class TaskRunReporter(Protocol):
    """Records task runs somewhere. Implementations must not raise: reporting never breaks a flow."""

    def task_run_created(self, task_name: str, state: TaskRunState = TaskRunState.RUNNING) -> str | None:
        """Record a new task run in ``state`` (attempt 1); return its id (None when not recorded).

        A task called directly starts at once: it is created Running, one request instead of a Pending and a
        Running one (every request is CPU on the server and in the flow's process).
        """
        ...

    def task_runs_created(
        self, task_names: Sequence[str], state: TaskRunState = TaskRunState.PENDING
    ) -> list[str | None]:
        """Record several task runs at once (a map's children, one request rather than one each); their ids in
        order (None for each not recorded)."""
        ...

    def task_run_state(
        self, task_run_id: str | None, state: TaskRunState, message: str | None = None, attempt: int = 1
    ) -> None:
        """Record a state of the task run ``task_run_id`` (ignored when it is None)."""
        ...


class NoopReporter:
    """The reporter of a flow run without a server: records nothing."""

    def task_run_created(self, task_name: str, state: TaskRunState = TaskRunState.RUNNING) -> str | None:
        return None

    def task_runs_created(
        self, task_names: Sequence[str], state: TaskRunState = TaskRunState.PENDING
    ) -> list[str | None]:
        return [None] * len(task_names)

    def task_run_state(
        self, task_run_id: str | None, state: TaskRunState, message: str | None = None, attempt: int = 1
    ) -> None:
        return None


_NOOP = NoopReporter()
_reporter: ContextVar[TaskRunReporter] = ContextVar("baton_task_run_reporter", default=_NOOP)
_task_run_id: ContextVar[str | None] = ContextVar("baton_task_run_id", default=None)


def current_reporter() -> TaskRunReporter:
    return _reporter.get()


def current_task_run_id() -> str | None:
    """The id of the task run whose code is executing here, if it was recorded (used to tag log lines)."""
    return _task_run_id.get()


@contextmanager
def reporting_to(reporter: TaskRunReporter) -> Iterator[None]:
    """Record the task runs of the code inside the block with ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


@contextmanager
def inside_task_run(task_run_id: str | None) -> Iterator[None]:
    token = _task_run_id.set(task_run_id)
    try:
        yield
    finally:
        _task_run_id.reset(token)
