"""``DaskExecutor``: a flow's submitted tasks on a dask.distributed cluster (issue 14; ``pip install 'baton[dask]'``).

Each attempt of a submitted task is a dask task; the flow's process keeps the task's loop (states, retries,
delays), so the run token never leaves it: workers only run the task's function. A result stays on the workers: the
task's future holds a handle to it, a task that depends on it gets it there (dask passes it from worker to worker),
and it travels to the flow's process only when the flow asks for it (``future.result()``). What the function logs
and prints on a worker comes back with the attempt's outcome and is replayed as the task run's lines.

With no address, the executor starts a cluster of its own for the run (``LocalCluster``, worker processes on
127.0.0.1, no dashboard) and closes it after; with one (``tcp://host:8786``) it uses that cluster and leaves it up.
The flow's own modules (its file, its folder's helpers) are pickled by value, so the workers need not have them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from baton.sdk.executors import ThreadExecutor
from baton.sdk.futures import RemoteValue

# Orchestration threads per worker thread of the cluster: each waits on one attempt at a time.
_THREADS_PER_WORKER_THREAD = 2
_MAX_THREADS = 256
_INSTALLED = [Path(path) for key in ("stdlib", "platstdlib", "purelib", "platlib") if (path := sysconfig.get_path(key))]


def _on_worker(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """One attempt on a worker: (``"ok"``, result, lines) or (``"error"``, the error, lines); never raises, so the
    lines of a failed attempt come back too."""
    records: list[tuple[int, str, str, float]] = []
    here = threading.get_ident()

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == here:  # a worker with several threads: only this attempt's records
                records.append((record.levelno, record.name, record.getMessage(), record.created))

    handler = Capture(logging.NOTSET)
    root = logging.getLogger()
    root.addHandler(handler)
    out = io.StringIO()
    try:
        with _info_level(root), contextlib.redirect_stdout(out):
            outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # the attempt's outcome: the flow's process decides about retries
        outcome = ("error", exc)
    finally:
        root.removeHandler(handler)
    return outcome[0], outcome[1], {"logs": records, "stdout": out.getvalue(), "stderr": ""}


_LEVEL_LOCK = threading.Lock()
_LEVEL_USERS = [0, logging.WARNING]  # attempts running on this worker, and the root level before the first


@contextlib.contextmanager
def _info_level(root: logging.Logger) -> Iterator[None]:
    """The root logger at INFO (a worker's default is WARNING) while any attempt runs on this worker: attempts on
    its other threads share the level, and the last one to end puts the worker's back."""
    with _LEVEL_LOCK:
        if _LEVEL_USERS[0] == 0:
            _LEVEL_USERS[1] = root.level
            root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)
        _LEVEL_USERS[0] += 1
    try:
        yield
    finally:
        with _LEVEL_LOCK:
            _LEVEL_USERS[0] -= 1
            if _LEVEL_USERS[0] == 0:
                root.setLevel(_LEVEL_USERS[1])


def _meta(packed: tuple[str, Any, Any]) -> tuple[str, Any, Any]:
    kind, value, lines = packed
    return kind, (value if kind == "error" else None), lines


def _value(packed: tuple[str, Any, Any]) -> Any:
    return packed[1]


def _remote(value: Any) -> Any:
    """An argument as dask takes it: a result kept on the cluster as its dask future (also one level inside a
    container), which dask hands to the worker as its value."""
    if isinstance(value, RemoteValue):
        return value.future
    if isinstance(value, list | tuple):
        return type(value)(_remote(item) for item in value)
    if isinstance(value, dict):
        return {key: _remote(item) for key, item in value.items()}
    return value


def _user_module(module: ModuleType | None) -> bool:
    """A module of the flow's own code (not the standard library's, nor an installed package's)."""
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        return module is not None and module.__name__ == "__main__"
    resolved = Path(path).resolve()
    return not any(resolved.is_relative_to(root) for root in _INSTALLED) and "baton" not in resolved.parts


class DaskExecutor:
    """Submitted tasks on a dask.distributed cluster: ``address`` (``tcp://host:port``) of a running one, or None
    for a temporary ``LocalCluster(**cluster_kwargs)`` of worker processes on 127.0.0.1 for the run."""

    def __init__(self, address: str | None = None, cluster_kwargs: Mapping[str, Any] | None = None) -> None:
        if address is not None and (not isinstance(address, str) or "://" not in address):
            raise ValueError(f"address must be a scheduler address like 'tcp://127.0.0.1:8786', got {address!r}")
        if cluster_kwargs is not None and address is not None:
            raise ValueError("cluster_kwargs configure a temporary cluster: give them without an address")
        self.address = address
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self._client: Any = None
        self._cluster: Any = None
        self._threads: ThreadExecutor | None = None
        self._live: set[Any] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DaskExecutor(address={self.address!r}, cluster_kwargs={self.cluster_kwargs!r})"

    def __copy__(self) -> DaskExecutor:
        return DaskExecutor(self.address, self.cluster_kwargs or None)

    def start(self) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise RuntimeError("DaskExecutor needs dask.distributed: pip install 'baton[dask]'") from exc
        if self.address is None:
            options = {"host": "127.0.0.1", "dashboard_address": None, "processes": True, **self.cluster_kwargs}
            self._cluster = LocalCluster(**options)
            self._client = Client(self._cluster)
        else:
            self._client = Client(self.address, timeout=30)
        threads = sum(self._client.nthreads().values()) or 1
        self._threads = ThreadExecutor(min(_MAX_THREADS, threads * _THREADS_PER_WORKER_THREAD))
        self._threads.start()

    def submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        if self._threads is None:
            raise RuntimeError("DaskExecutor.submit before start")
        return self._threads.submit(call)

    def run_attempt(self, call: Callable[[], Any], timeout: float | None, name: str) -> Any:
        """One attempt on the cluster; its result as a :class:`RemoteValue`, its error raised here, its lines
        replayed here.

        Raises:
            TimeoutError: it ran past ``timeout`` seconds (its dask task is cancelled).
        """
        import cloudpickle
        from distributed import wait

        from baton.sdk.processes import replay

        fn, args, kwargs = _parts(call)
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        if module is not None and _user_module(module):
            cloudpickle.register_pickle_by_value(module)  # the workers need not have the flow's code
        client = self._client
        packed = client.submit(_on_worker, fn, _remote(args), _remote(kwargs), pure=False, key=_key(name))
        self._track(packed, True)
        try:
            try:
                wait(packed, timeout=timeout)
            except TimeoutError:
                client.cancel(packed)
                message = f"task {name!r} did not finish within {timeout:g}s: its dask task was cancelled"
                raise TimeoutError(message) from None
            kind, error, lines = client.submit(_meta, packed, pure=False).result()
            replay(lines)
            if kind == "error":
                raise error
            return RemoteValue(client.submit(_value, packed, pure=False))
        finally:
            self._track(packed, False)

    def _track(self, future: Any, live: bool) -> None:
        with self._lock:
            (self._live.add if live else self._live.discard)(future)

    def shutdown(self, cancel: bool) -> None:
        if cancel and self._client is not None:
            with self._lock:
                live = list(self._live)
            if live:
                self._client.cancel(live)  # dask stops what has not started and drops what runs
        if self._threads is not None:
            self._threads.shutdown(cancel)
            self._threads = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _parts(call: Callable[[], Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    import functools

    if isinstance(call, functools.partial):
        return call.func, call.args, dict(call.keywords)
    return call, (), {}


def _key(name: str) -> str:
    import uuid

    return f"{name}-{uuid.uuid4().hex}"
