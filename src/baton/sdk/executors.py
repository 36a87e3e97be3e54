"""Where a flow's submitted tasks run (issue 14): ``@flow(executor=...)``.

An executor only runs calls: the flow's process keeps the bookkeeping (task runs, their states, dependencies,
retries) in ``baton.sdk.futures``, so that reporting, and the flow run's token, stay in the flow's process.

* :class:`SequentialExecutor` (the default): a submitted task runs at once in the flow's thread, as a direct call
  does. Nothing runs side by side, nothing needs to be thread-safe, and a flow that never submits behaves exactly
  as before: the safe default for code written without parallelism in mind.
* :class:`ThreadExecutor`: a pool of threads in the flow's process; for I/O-bound tasks (HTTP, databases), which
  release the GIL while they wait. Cancellation is cooperative: a task not started never starts, one running is
  left to finish (Python cannot stop a thread) while its task run is recorded Cancelled.
* :class:`ProcessExecutor`: each attempt of a submitted task in a process forked from the flow's
  (``baton.sdk.processes``), at most ``max_workers`` at once; for CPU-bound tasks. Retries, states and logs are
  kept by the flow's process; timeouts and cancellation kill the attempt's processes (what it started too).

An executor with ``run_attempt`` runs each attempt of a submitted task there (the flow's process waits for it in one
of its threads); one without runs the whole task in the thread ``submit`` gives it.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
from collections.abc import Callable
from typing import Any, Protocol


class Executor(Protocol):
    """Runs calls for a flow run. ``start`` before the flow, ``shutdown`` after it (``cancel``: it was stopped)."""

    def start(self) -> None: ...

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]: ...

    def shutdown(self, cancel: bool) -> None: ...


class SequentialExecutor:
    """Runs each call at once in the calling thread (the flow's)."""

    def __repr__(self) -> str:
        return "SequentialExecutor()"

    def start(self) -> None:
        return None

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(call())
        except BaseException as exc:  # the future holds it: result() raises it in the caller
            future.set_exception(exc)
        return future

    def shutdown(self, cancel: bool) -> None:
        return None


class ThreadExecutor:
    """A pool of ``max_workers`` threads (default: Python's, ``min(32, CPUs + 4)``) in the flow's process."""

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be 1 or more, got {max_workers!r}")
        self.max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"ThreadExecutor(max_workers={self.max_workers})"

    def start(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="baton-task")

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        if self._pool is None:
            raise RuntimeError("ThreadExecutor.submit before start")
        # The flow's context (its reporter, the task run a log line belongs to) follows the call into the pool.
        context = contextvars.copy_context()
        return self._pool.submit(context.run, call)

    def shutdown(self, cancel: bool) -> None:
        if self._pool is not None:
            # Cancelled: calls not started are dropped, running ones are not waited for (threads cannot be killed).
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None


class ProcessExecutor:
    """Each attempt of a submitted task in its own process forked from the flow's; ``max_workers`` at once
    (default: the number of CPUs). Tasks and arguments need not be picklable (the child is a fork), results and
    errors must be. Fork only: Linux and macOS' POSIX fork, not Windows."""

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be 1 or more, got {max_workers!r}")
        self.max_workers = max_workers
        self._threads = ThreadExecutor(max_workers or os.cpu_count() or 1)
        self._children: Any = None

    def __repr__(self) -> str:
        return f"ProcessExecutor(max_workers={self.max_workers})"

    def __copy__(self) -> ProcessExecutor:
        return ProcessExecutor(self.max_workers)

    def start(self) -> None:
        from baton.sdk.processes import Children

        self._children = Children()
        self._threads.start()

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        return self._threads.submit(call)

    def run_attempt(self, call: Callable[[], Any], timeout: float | None, name: str) -> Any:
        return self._children.run(call, timeout, name)

    def shutdown(self, cancel: bool) -> None:
        if cancel and self._children is not None:
            self._children.stop()
        self._threads.shutdown(cancel)


def from_spec(spec: str) -> Executor:
    """The executor a run config's ``executor`` names (``baton.schemas.core.EXECUTOR_SPEC``): ``sequential``,
    ``thread[:N]``, ``process[:N]``, ``dask[:N]`` (a temporary cluster of N worker processes) or
    ``dask:tcp://host:port``.

    Raises:
        ValueError: not such a spec.
    """
    import re

    from baton.schemas.core import EXECUTOR_SPEC

    if not isinstance(spec, str) or re.fullmatch(EXECUTOR_SPEC, spec) is None:
        raise ValueError(
            f"executor {str(spec)[:80]!r} is not sequential, thread[:N], process[:N], dask[:N] or dask:ADDRESS"
        )
    kind, _, rest = spec.partition(":")
    if kind == "sequential":
        return SequentialExecutor()
    size = int(rest) if rest.isdigit() else None
    if kind == "thread":
        return ThreadExecutor(size)
    if kind == "process":
        return ProcessExecutor(size)
    from baton.sdk.dask_executor import DaskExecutor

    if size is not None or not rest:
        return DaskExecutor(cluster_kwargs={"n_workers": size} if size else None)
    return DaskExecutor(rest)
