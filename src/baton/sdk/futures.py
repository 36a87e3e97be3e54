"""Submitted tasks (issue 14): ``my_task.submit(...)``, ``my_task.map(...)``, ``future.result()``, ``wait``,
``as_completed`` and ``unmapped``.

A submitted task is a task run at once (Pending), and runs on the flow's executor (``baton.sdk.executors``) once
the futures among its arguments are done: a future passed as an argument is a dependency, replaced by its result
when the task runs. If one of them failed, the task does not run: its task run ends Failed with a message naming
the upstream task run, and its future raises :class:`UpstreamFailed` (so do the futures that depend on it, each
naming its own upstream). Results pass from task to task inside the flow's process, never through the API.

Bookkeeping happens in the flow's process, whatever the executor: the :class:`Submissions` of the flow run holds
its futures, submits each call when its inputs are ready (a call never waits for another inside a worker, so a
bounded pool cannot deadlock), and at the end of the flow waits for them all, or, when the flow was stopped,
cancels those not started.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, NamedTuple, TypeVar

from baton.sdk.executors import Executor, SequentialExecutor

R = TypeVar("R")


class UpstreamFailed(Exception):
    """A submitted task did not run because a task it depends on failed (or did not run either)."""


# Lower case, as Prefect's: it reads as a marker in a call, not as a type.
class unmapped:
    """An argument of :meth:`Task.map` passed whole to every mapped call instead of being mapped over."""

    def __init__(self, value: Any) -> None:
        self.value = value


class RemoteValue:
    """A result an executor keeps where the task ran (a dask future): fetched once, when the flow asks for it;
    a task that depends on it gets it there."""

    def __init__(self, future: Any) -> None:
        self.future = future
        self._lock = threading.Lock()
        self._fetched = False
        self._value: Any = None

    def get(self) -> Any:
        with self._lock:
            if not self._fetched:
                self._value = self.future.result()
                self._fetched = True
            return self._value


class TaskFuture(Generic[R]):
    """What ``submit`` returns: the task run's id, and its result once it ran."""

    def __init__(self, name: str, task_run_id: str | None) -> None:
        self.name = name
        self.task_run_id = task_run_id
        self._future: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._observed = False  # its outcome was read (result, exception, or passed to a task that ran)

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"TaskFuture({self.name!r}, {state})"

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> R:
        """The task's return value, waiting up to ``timeout`` seconds (None: for ever).

        Raises:
            the task's last error, :class:`UpstreamFailed` when it did not run, or TimeoutError.
        """
        try:
            outcome = self._future.result(timeout)
        finally:
            self._observed = self._observed or self._future.done()
        value: R = outcome.get() if isinstance(outcome, RemoteValue) else outcome
        return value

    def _outcome(self) -> Any:
        """Its result as the executor holds it (a RemoteValue stays where it is): for the tasks that depend on it."""
        return self._future.result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        finally:
            self._observed = self._observed or self._future.done()

    def _failure(self) -> BaseException | None:
        """Its error, when it is done and failed (or was cancelled); None otherwise. Not an observation."""
        if not self._future.done():
            return None
        if self._future.cancelled():
            return concurrent.futures.CancelledError(f"task {self.name!r} was cancelled")
        return self._future.exception()

    def _add_done_callback(self, callback: Callable[[TaskFuture[R]], None]) -> None:
        self._future.add_done_callback(lambda _future: callback(self))


class DoneAndNotDone(NamedTuple):
    done: set[TaskFuture[Any]]
    not_done: set[TaskFuture[Any]]


def wait(futures: Iterable[TaskFuture[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Wait until every future is done, or ``timeout`` seconds; the done ones and the others."""
    by_inner = {future._future: future for future in futures}
    done, not_done = concurrent.futures.wait(list(by_inner), timeout)
    return DoneAndNotDone({by_inner[inner] for inner in done}, {by_inner[inner] for inner in not_done})


def as_completed(futures: Iterable[TaskFuture[Any]], timeout: float | None = None) -> Iterator[TaskFuture[Any]]:
    """The futures in the order they finish.

    Raises:
        TimeoutError: ``timeout`` seconds passed before all finished.
    """
    by_inner = {future._future: future for future in futures}
    for inner in concurrent.futures.as_completed(list(by_inner), timeout):
        yield by_inner[inner]


# --- arguments ---------------------------------------------------------------------------------------------------


def futures_in(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[TaskFuture[Any]]:
    """The futures among the arguments, also one level inside lists, tuples, sets and dict values."""
    found: list[TaskFuture[Any]] = []
    for value in (*args, *kwargs.values()):
        for item in _shallow(value):
            if isinstance(item, TaskFuture) and item not in found:
                found.append(item)
    return found


def _shallow(value: Any) -> Iterable[Any]:
    if isinstance(value, list | tuple | set | frozenset):
        return [value, *value]
    if isinstance(value, dict):
        return [value, *value.values()]
    return [value]


def resolved(value: Any) -> Any:
    """``value`` with each future (also one level inside a container) replaced by its result."""
    if isinstance(value, TaskFuture):
        return value._outcome()
    if isinstance(value, list | tuple | set | frozenset):
        return rebuilt(value, [item._outcome() if isinstance(item, TaskFuture) else item for item in value])
    if isinstance(value, dict):
        return {key: item._outcome() if isinstance(item, TaskFuture) else item for key, item in value.items()}
    return value


def rebuilt(container: Any, items: list[Any]) -> Any:
    """A container of ``container``'s type holding ``items``: a named tuple's constructor takes its fields one by
    one, not an iterable (``_make`` does)."""
    make = getattr(type(container), "_make", None)
    return make(items) if callable(make) else type(container)(items)


def first_failure(upstream: list[TaskFuture[Any]]) -> TaskFuture[Any] | None:
    return next((future for future in upstream if future._failure() is not None), None)


class TaskFailed(Exception):
    """The flow returned, but tasks it submitted failed and it never read their outcome."""


# --- the flow run's submissions ----------------------------------------------------------------------------------


class Submissions:
    """The futures of one flow run and its executor."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._lock = threading.Lock()
        self._futures: list[TaskFuture[Any]] = []
        self.stopped = False

    def add(
        self,
        future: TaskFuture[R],
        upstream: list[TaskFuture[Any]],
        call: Callable[[], R],
        skip: Callable[[TaskFuture[Any]], BaseException],
    ) -> TaskFuture[R]:
        """Run ``call`` on the executor once ``upstream`` are done, its outcome ``future``'s; if one of them
        failed, ``skip(that one)`` is the error the future holds instead, and ``call`` never runs."""
        with self._lock:
            self._futures.append(future)
        # The submitter's context (the reporter, the flow's settings) goes with the call: it may be started from
        # another thread, the one that finished its last upstream task.
        context = contextvars.copy_context()
        run = functools.partial(context.run, call)

        def skipped(failed: TaskFuture[Any]) -> BaseException:
            return context.run(skip, failed)

        remaining = [len(upstream)]
        counter = threading.Lock()

        def ready(_done: TaskFuture[Any] | None = None) -> None:
            with counter:
                remaining[0] -= 1 if _done is not None else 0
                if remaining[0] > 0:
                    return
            self._start(future, upstream, run, skipped)

        if not upstream:
            ready()
        for dependency in upstream:
            dependency._add_done_callback(ready)
        return future

    def _start(
        self,
        future: TaskFuture[R],
        upstream: list[TaskFuture[Any]],
        call: Callable[[], R],
        skip: Callable[[TaskFuture[Any]], BaseException],
    ) -> None:
        failed = first_failure(upstream)
        for dependency in upstream:
            dependency._observed = True  # its outcome goes on in this task's (its result, or its failure)
        if failed is not None:
            future._future.set_exception(skip(failed))
            return
        if self.stopped:
            future._future.cancel()
            return
        try:
            running = self.executor.submit(call)
        except BaseException as exc:  # the executor refused (shut down, broken): the task fails with that
            future._future.set_exception(exc)
            return
        running.add_done_callback(lambda inner: _copy_outcome(inner, future._future))

    def finish(self) -> None:
        """Wait for every future, those submitted while waiting included (the flow has returned).

        Raises:
            TaskFailed: some failed and the flow never read their outcome: a failure is never silent.
        """
        while True:
            with self._lock:
                pending = [future for future in self._futures if not future.done()]
            if not pending:
                break
            wait(pending)
        # A task that did not run for its upstream's failure adds nothing: that failure is told (or was read).
        unread = [f for f in self._futures if not f._observed and not isinstance(f._failure(), UpstreamFailed | None)]
        if unread:
            named = ", ".join(f"{future.name!r} ({describe(future._failure())})" for future in unread[:5])
            more = f" and {len(unread) - 5} more" if len(unread) > 5 else ""
            raise TaskFailed(f"{len(unread)} submitted task(s) failed and the flow did not read them: {named}{more}")

    def stop(self) -> None:
        """The flow was stopped: nothing not started starts (running calls are the executor's to stop)."""
        self.stopped = True


def _copy_outcome(inner: concurrent.futures.Future[Any], outer: concurrent.futures.Future[Any]) -> None:
    if inner.cancelled():
        outer.cancel()
    elif (error := inner.exception()) is not None:
        outer.set_exception(error)
    else:
        outer.set_result(inner.result())


def describe(error: BaseException | None) -> str:
    """``"<ExceptionType>: <message>"``, or the type alone when the message is empty. Never raises: an error whose
    ``__str__`` raises (the task's own class) must still end its task run with a message, not leave it open."""
    try:
        text = str(error)
    except Exception as problem:  # the user's __str__ may raise anything: described, never raised
        text = f"<its message cannot be shown: str() raised {type(problem).__name__}>"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_submissions: ContextVar[Submissions | None] = ContextVar("baton_submissions", default=None)


def current_submissions() -> Submissions:
    """The flow run's submissions; outside a flow (a task submitted from a script), one on the spot that runs each
    task at once."""
    return _submissions.get() or Submissions(SequentialExecutor())


@contextmanager
def submitting_to(executor: Executor) -> Iterator[Submissions]:
    """Run the block (a flow) with ``executor`` for its submitted tasks; on leaving, wait for them, or, when the
    block raised (a failure, a cancellation), stop those not started."""
    submissions = Submissions(executor)
    token = _submissions.set(submissions)
    stopped = True
    try:
        # Inside: an executor that fails half-way (a temporary dask cluster up, its client refused) is shut down,
        # and the context no longer names submissions that nothing runs.
        executor.start()
        yield submissions
        submissions.finish()
        stopped = False
    finally:
        _submissions.reset(token)
        if stopped:
            submissions.stop()
        executor.shutdown(cancel=stopped)
