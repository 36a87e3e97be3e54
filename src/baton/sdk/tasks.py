"""``@task``: a unit of work inside a flow, retried and timed out on its own, recorded as a task run.

Usage::

    from baton import task

    @task(retries=2, retry_delay_seconds=5, timeout_seconds=60)
    def fetch(url: str) -> bytes: ...

Calling a task runs it at once and returns its result (or raises its last error). Inside a flow run that
the engine executes, each call is recorded as a task run with its states: Running (from its creation), Retrying,
Success, Failed. ``task.submit(...)`` and ``task.map(...)`` run it on the flow's executor instead and return
futures (``baton.sdk.futures``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from baton.schemas.states import TaskRunState
from baton.sdk.context import FlowRunCancelled, current_reporter, inside_task_run
from baton.sdk.futures import (
    TaskFuture,
    UpstreamFailed,
    current_submissions,
    describe,
    futures_in,
    resolved,
    unmapped,
)

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("baton.task")
# The executor of the submitted task running in this context (None: a direct call, run here).
_attempts_on: contextvars.ContextVar[Any] = contextvars.ContextVar("baton_attempts_on", default=None)


def describe_error(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, or the type alone when the message is empty; never raises."""
    return describe(exc)


_NEW: Any = object()  # _submit's task run is not recorded yet (map records its children first, together)


class Task(Generic[P, R]):
    """A function wrapped by ``@task``. Calling it runs the function with retries and a timeout."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_seconds: float = 0,
        timeout_seconds: float | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if retry_delay_seconds < 0:
            raise ValueError(f"retry_delay_seconds must be 0 or more, got {retry_delay_seconds}")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be more than 0, got {timeout_seconds}")
        functools.update_wrapper(self, fn)  # first: it copies fn.__dict__, which must not hide our attributes
        self.fn = fn
        self.name = name or fn.__name__
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.timeout_seconds = timeout_seconds

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, retries={self.retries}, timeout_seconds={self.timeout_seconds})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        task_run_id = current_reporter().task_run_created(self.name)
        return self._execute(task_run_id, args, kwargs, started=True)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]:
        """Run the task on the flow's executor once the futures among its arguments are done (each replaced by its
        result); return its future at once. Its task run is recorded Pending now, Running when it starts."""
        return self._submit(self.name, args, kwargs)

    def map(self, *args: Any, **kwargs: Any) -> list[TaskFuture[R]]:
        """Submit one call per item of the list (or tuple) arguments, taken side by side (all as long as the
        shortest); other arguments, and those wrapped in :class:`~baton.sdk.futures.unmapped`, go whole to every
        call. A future to map over is waited for first (its result is the list). Task runs are named
        ``name[i]``."""
        values: dict[int | str, Any] = dict(enumerate(args))
        values.update(kwargs)
        mapped = {key: _items(value) for key, value in values.items() if _is_mapped(value)}
        if not mapped:
            raise ValueError(f"task {self.name!r}.map needs at least one list, tuple or future of one to map over")
        count = min(len(items) for items in mapped.values())
        names = [f"{self.name}[{index}]" for index in range(count)]
        # The children's task runs in one request (or a few): a map of 1,000 is not 1,000 round trips before the
        # first child can start.
        reporter = current_reporter()
        together = getattr(reporter, "task_runs_created", None)  # a reporter written before it: one by one
        if together is not None and names:
            task_run_ids = list(together(names, TaskRunState.PENDING))
        else:
            task_run_ids = [reporter.task_run_created(name, TaskRunState.PENDING) for name in names]
        if len(task_run_ids) != len(names):
            raise RuntimeError(f"the reporter recorded {len(task_run_ids)} task runs for {len(names)} children")
        futures = []
        for index in range(count):
            call = {key: mapped[key][index] if key in mapped else _whole(value) for key, value in values.items()}
            positional = tuple(call[i] for i in range(len(args)))
            named = {key: value for key, value in call.items() if isinstance(key, str)}
            futures.append(self._submit(names[index], positional, named, task_run_ids[index]))
        return futures

    def _submit(
        self, task_run_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], task_run_id: str | None = _NEW
    ) -> TaskFuture[R]:
        if task_run_id is _NEW:
            task_run_id = current_reporter().task_run_created(task_run_name, TaskRunState.PENDING)
        future: TaskFuture[R] = TaskFuture(task_run_name, task_run_id)
        upstream = futures_in(args, kwargs)

        def call() -> R:
            inputs = tuple(resolved(value) for value in args)
            named = {key: resolved(value) for key, value in kwargs.items()}
            token = _attempts_on.set(current_submissions().executor)  # a submitted task's attempts go there
            try:
                return self._execute(task_run_id, inputs, named, started=False)
            finally:
                _attempts_on.reset(token)

        def skip(failed: TaskFuture[Any]) -> BaseException:
            run = f" (task run {failed.task_run_id})" if failed.task_run_id else ""
            why = f"not run: upstream task {failed.name!r}{run} did not succeed"
            current_reporter().task_run_state(task_run_id, TaskRunState.FAILED, why)
            return UpstreamFailed(why)

        return current_submissions().add(future, upstream, call, skip)

    def _execute(self, task_run_id: str | None, args: Any, kwargs: Any, *, started: bool) -> R:
        """The task's attempts; ``started``: its task run was created Running (else it is Pending until now)."""
        reporter = current_reporter()
        with inside_task_run(task_run_id):
            attempt = 1
            while True:
                if attempt > 1 or not started:  # a direct call's first Running is its task run's creation
                    reporter.task_run_state(task_run_id, TaskRunState.RUNNING, attempt=attempt)
                try:
                    result = self._run_once(args, kwargs)
                except FlowRunCancelled:
                    reporter.task_run_state(task_run_id, TaskRunState.CANCELLED, "flow run cancelled", attempt)
                    raise
                except Exception as exc:
                    if _attempts_on.get() is not None and current_submissions().stopped:
                        # The flow run was stopped: its executor's cancelling (a killed process, a cancelled dask
                        # task) ended this attempt, not the task's code.
                        reporter.task_run_state(task_run_id, TaskRunState.CANCELLED, "flow run cancelled", attempt)
                        raise
                    if attempt > self.retries:
                        reporter.task_run_state(task_run_id, TaskRunState.FAILED, describe_error(exc), attempt)
                        raise
                    self._wait_for_retry(task_run_id, exc, attempt)
                    attempt += 1
                    continue
                except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, never retry
                    reporter.task_run_state(task_run_id, TaskRunState.FAILED, describe_error(exc), attempt)
                    raise
                reporter.task_run_state(task_run_id, TaskRunState.SUCCESS, attempt=attempt)
                return result

    def _wait_for_retry(self, task_run_id: str | None, exc: Exception, attempt: int) -> None:
        """Record Retrying and sleep the retry delay; a stop during the delay still ends the task run.

        This runs inside the ``except Exception`` clause of :meth:`__call__`, whose sibling clauses do not see
        what it raises: without the handlers here, a cancellation that interrupts the sleep (the usual case for
        a long delay) would leave the task run Retrying for good.
        """
        reporter = current_reporter()
        try:
            self._before_retry(task_run_id, exc, attempt)
        except FlowRunCancelled:
            reporter.task_run_state(task_run_id, TaskRunState.CANCELLED, "flow run cancelled", attempt)
            raise
        except BaseException as stop:  # KeyboardInterrupt, SystemExit during the delay: never retried
            reporter.task_run_state(task_run_id, TaskRunState.FAILED, describe_error(stop), attempt)
            raise

    def _before_retry(self, task_run_id: str | None, exc: Exception, attempt: int) -> None:
        message = describe_error(exc)
        logger.warning(
            "Task %r failed on attempt %d of %d (%s); retrying in %ss",
            self.name,
            attempt,
            self.retries + 1,
            message,
            self.retry_delay_seconds,
        )
        current_reporter().task_run_state(task_run_id, TaskRunState.RETRYING, message, attempt)
        if self.retry_delay_seconds:
            time.sleep(self.retry_delay_seconds)

    def _run_once(self, args: Any, kwargs: Any) -> R:
        run_attempt = getattr(_attempts_on.get(), "run_attempt", None)
        if run_attempt is not None:  # the executor runs attempts elsewhere (a process): its timeout kills them
            result: R = run_attempt(functools.partial(self.fn, *args, **kwargs), self.timeout_seconds, self.name)
            return result
        if self.timeout_seconds is None:
            return self.fn(*args, **kwargs)
        return self._run_with_timeout(args, kwargs, self.timeout_seconds)

    def _run_with_timeout(self, args: Any, kwargs: Any, timeout: float) -> R:
        # Python cannot kill a thread: on timeout the worker thread is abandoned (a daemon, so it does not
        # hold the process open) and may keep running until its function returns. The task fails at once.
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = self.fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread, which re-raises it
                outcome["error"] = exc

        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(target,), name=f"baton-task-{self.name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise TimeoutError(
                f"task {self.name!r} did not finish within {timeout:g}s; its thread is abandoned "
                "(Python threads cannot be killed) and may still be running"
            )
        if "error" in outcome:
            raise outcome["error"]
        result: R = outcome["result"]
        return result


def _is_mapped(value: Any) -> bool:
    return isinstance(value, list | tuple | TaskFuture)


def _items(value: Any) -> list[Any]:
    items = value.result() if isinstance(value, TaskFuture) else value
    if not isinstance(items, list | tuple):
        raise TypeError(f"map needs lists or tuples to map over, got {type(items).__name__}")
    return list(items)


def _whole(value: Any) -> Any:
    return value.value if isinstance(value, unmapped) else value


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float = 0,
    timeout_seconds: float | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float = 0,
    timeout_seconds: float | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task; usable bare (``@task``) or with arguments (``@task(retries=3)``).

    Args:
        fn: the function (when used bare).
        name: the task's name in task runs; default the function's name.
        retries: how many times to run it again after a failure.
        retry_delay_seconds: pause before each retry.
        timeout_seconds: fail an attempt that runs longer (its thread is abandoned, see :class:`Task`).

    Returns:
        The :class:`Task`, or a decorator that makes one.
    """

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        return Task(
            function,
            name=name,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            timeout_seconds=timeout_seconds,
        )

    return decorate(fn) if fn is not None else decorate
