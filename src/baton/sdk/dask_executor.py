"""``DaskExecutor``: a flow's submitted tasks on a dask.distributed cluster (issue 14; ``pip install 'baton[dask]'``).

Each attempt of a submitted task is a dask task; the flow's process keeps the task's loop (states, retries,
delays), so the run token never leaves it: workers only run the task's function. A result stays on the workers: the
task's future holds a handle to it, a task that depends on it gets it there (dask passes it from worker to worker),
and it travels to the flow's process only when the flow asks for it (``future.result()``). A result dask cannot
serialise, or an error that cannot be rebuilt, fails the attempt on the worker (``TaskTransferError``): left there,
it would make the tasks that need it wait for ever. What the function logs and prints on a worker (its own thread's
lines, bounded as a forked process's are) comes back with the attempt's outcome and is replayed as the task run's.

With no address, the executor starts a cluster of its own for the run (``LocalCluster``, worker processes on
127.0.0.1, no dashboard, TLS with mutual authentication from certificates made for it, the flow's ``BATON_*``
variables kept from its workers) and closes it after; with one (``tcp://host:8786``) it uses that cluster and
leaves it up, and an address where nothing answers fails the run's start at once (``ExecutorError``). The flow's
own modules (its file, its folder's helpers) are pickled by value, so the workers need not have them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import pickle
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from baton.exceptions import ExecutorError
from baton.sdk.executors import ThreadExecutor
from baton.sdk.futures import RemoteValue, describe, rebuilt
from baton.sdk.processes import BoundedText, RecordCapture, TaskTransferError, outcome_error

# Orchestration threads per worker thread of the cluster: each waits on one attempt at a time.
_THREADS_PER_WORKER_THREAD = 2
_MAX_THREADS = 256
_INSTALLED = [Path(path) for key in ("stdlib", "platstdlib", "purelib", "platlib") if (path := sysconfig.get_path(key))]


def _on_worker(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """One attempt on a worker: (``"ok"``, result, lines) or (``"error"``, the error, lines); never raises, so the
    lines of a failed attempt come back too."""
    here = threading.get_ident()

    class Capture(RecordCapture):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == here:  # a worker with several threads: only this attempt's records
                super().emit(record)

    handler = Capture()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    out, err = BoundedText(), BoundedText()
    try:
        with _capturing(root, out, err):
            outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # the attempt's outcome: the flow's process decides about retries
        outcome = ("error", exc)
    finally:
        root.removeHandler(handler)
    kind, value = _sendable(outcome)
    return kind, value, {"logs": handler.kept(), "stdout": out.getvalue(), "stderr": err.getvalue()}


def _sendable(outcome: tuple[str, Any]) -> tuple[str, Any]:
    """``outcome``, or a :class:`TaskTransferError` when it cannot leave this worker. A result dask cannot serialise
    would stay on the worker for ever: a task depending on it on another worker would wait for it (the transfer
    fails and is tried again, never failing the task), and so would the flow. An error that cannot be rebuilt
    from its pickle (an exception class with required ``__init__`` arguments) would reach the flow's process as
    the unpickling's TypeError, its own text lost."""
    from distributed.protocol import pickle as dask_pickle
    from distributed.protocol import serialize

    kind, value = outcome
    try:
        if kind == "ok":
            serialize(value, on_error="raise")  # as dask will, to send it to another worker or to the flow
        else:
            dask_pickle.loads(dask_pickle.dumps(value))
    except BaseException as problem:  # a user's __reduce__ may raise anything: told as the attempt's error
        return "error", outcome_error(outcome, problem, "the dask worker")
    return outcome


class _PerThread(io.TextIOBase):
    """A worker's ``sys.stdout`` or ``sys.stderr`` while attempts run on it: what a thread running an attempt
    writes goes to that attempt's buffer, anything else to the worker's own stream. (Swapping ``sys.stdout`` per
    attempt, as ``redirect_stdout`` does, mixes the prints of attempts on the worker's other threads and, when
    they end out of order, leaves the worker printing into a finished attempt's buffer.)"""

    def __init__(self, original: Any) -> None:
        super().__init__()
        self.original = original
        self.buffers: dict[int, BoundedText] = {}

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return str(getattr(self.original, "encoding", None) or "utf-8")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        buffer = self.buffers.get(threading.get_ident())
        return buffer.write(text) if buffer is not None else int(self.original.write(text))

    def flush(self) -> None:
        if threading.get_ident() not in self.buffers:
            self.original.flush()

    def fileno(self) -> int:
        return int(self.original.fileno())

    @property
    def buffer(self) -> Any:
        """The binary side (``sys.stdout.buffer``) of this thread's stream: an attempt's bytes go to its lines."""
        buffer = self.buffers.get(threading.get_ident())
        return buffer.buffer if buffer is not None else self.original.buffer


class _Shared:
    """What the attempts running on this worker share: how many run, the root level and streams before the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts = 0
        self.level = logging.WARNING
        self.streams: tuple[_PerThread, _PerThread] | None = None


_SHARED = _Shared()


@contextlib.contextmanager
def _capturing(root: logging.Logger, out: BoundedText, err: BoundedText) -> Iterator[None]:
    """While any attempt runs on this worker: the root logger at INFO (a worker's default is WARNING) and
    ``sys.stdout``/``sys.stderr`` routed per thread; this thread's prints go to ``out`` and ``err``. The last
    attempt to end puts the worker's level and streams back."""
    here = threading.get_ident()
    with _SHARED.lock:
        if _SHARED.streams is None:
            _SHARED.level = root.level
            root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)
            _SHARED.streams = (_PerThread(sys.stdout), _PerThread(sys.stderr))
            sys.stdout, sys.stderr = _SHARED.streams
        _SHARED.attempts += 1
        stdout, stderr = _SHARED.streams
        stdout.buffers[here], stderr.buffers[here] = out, err
    try:
        yield
    finally:
        with _SHARED.lock:
            del stdout.buffers[here], stderr.buffers[here]
            _SHARED.attempts -= 1
            if _SHARED.attempts == 0:
                root.setLevel(_SHARED.level)
                if sys.stdout is stdout:  # unless something else replaced it since
                    sys.stdout = stdout.original
                if sys.stderr is stderr:
                    sys.stderr = stderr.original
                _SHARED.streams = None


def _meta(packed: tuple[str, Any, Any]) -> tuple[str, Any, Any]:
    kind, value, lines = packed
    return kind, (value if kind == "error" else None), lines


def _value(packed: tuple[str, Any, Any]) -> Any:
    return packed[1]


def _remote(value: Any, client: Any) -> Any:
    """An argument as dask takes it: a result kept on the cluster as its dask future (also one level inside a
    container), which dask hands to the worker as its value. Dask looks for futures inside lists, tuples (named ones
    too), sets and dicts, not frozensets: one holding a future is made on the cluster, as a dask task of its own."""
    if isinstance(value, RemoteValue):
        return value.future
    if isinstance(value, frozenset) and any(isinstance(item, RemoteValue) for item in value):
        return client.submit(frozenset, [_remote(item, client) for item in value], pure=False)
    if isinstance(value, list | tuple | set | frozenset):
        return rebuilt(value, [_remote(item, client) for item in value])
    if isinstance(value, dict):
        return {key: _remote(item, client) for key, item in value.items()}
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
        """Start the temporary cluster, or connect to the one at ``address``.

        Raises:
            ExecutorError: dask.distributed is not installed, or the address cannot be used (see ``_connect``).
        """
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ExecutorError("DaskExecutor needs dask.distributed: pip install 'baton[dask]'") from exc
        if self.address is None:
            options = _cluster_options(self.cluster_kwargs)
            self._cluster = LocalCluster(**options)
            self._client = Client(self._cluster, security=self._cluster.security)
        else:
            self._client = _connect(self.address)
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
        try:
            inputs = _remote(args, client), _remote(kwargs, client)
            packed = client.submit(_on_worker, fn, *inputs, pure=False, key=_key(name))
        except (TypeError, AttributeError, pickle.PicklingError) as exc:  # what dask raises for what cannot pickle
            # Dask's error names its own graph's types; the argument to blame is found only now, on this rare path.
            culprit = _unsendable(fn, args, kwargs) or describe(exc)
            raise TaskTransferError(f"task {name!r} cannot be sent to the dask cluster: {culprit}") from None
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


def _cluster_options(cluster_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The temporary cluster's options: ``cluster_kwargs`` over ours. Its scheduler and workers listen on 127.0.0.1,
    where any local process (another user's too) could connect and run code on a worker: unless the user chose a
    ``security``, they speak TLS with mutual authentication, from certificates made for this cluster alone, in
    memory. Its worker processes take the flow's ``BATON_*`` variables (the run token) out of their environment.

    Raises:
        ExecutorError: the ``cryptography`` package, which makes the certificates, is not installed.
    """
    from distributed.security import Security

    options = {"host": "127.0.0.1", "dashboard_address": None, "processes": True, **cluster_kwargs}
    # With no dashboard the scheduler still serves its HTTP routes (health, metrics), on 8787 unless told: a port of
    # the system's choosing on loopback, so that two clusters on a host do not meet there ("Port 8787 is already in
    # use" is a warning, and an error where warnings are).
    options["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **(options.get("scheduler_kwargs") or {})}
    if options.get("security") is None:
        try:
            options["security"] = Security.temporary()
        except ImportError as exc:
            raise ExecutorError(
                "DaskExecutor's temporary cluster needs cryptography: pip install 'baton[dask]'"
            ) from exc
    if options["processes"]:  # workers in threads of the flow's process would clear the flow's own environment
        preload = options.get("preload") or []
        options["preload"] = [*([preload] if isinstance(preload, str) else preload), "baton.sdk.dask_preload"]
    return options


def _unsendable(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """Which of a task's function and arguments cannot be pickled, and why; None when each can on its own."""
    import cloudpickle

    named = [("its function", fn)]
    named += [(f"argument {index + 1}", value) for index, value in enumerate(args)]
    named += [(f"argument {key!r}", value) for key, value in kwargs.items()]
    for what, value in named:
        if any(isinstance(item, RemoteValue) for item in _shallow(value)):
            continue  # sent as a dask future, not pickled here
        try:
            cloudpickle.dumps(value)
        except Exception as exc:  # anything a __reduce__ raises: that is the answer
            return f"{what} (a {type(value).__name__}): {describe(exc)}"
    return None


def _shallow(value: Any) -> list[Any]:
    if isinstance(value, list | tuple | set | frozenset):
        return [value, *value]
    if isinstance(value, dict):
        return [value, *value.values()]
    return [value]


def _parts(call: Callable[[], Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    import functools

    if isinstance(call, functools.partial):
        return call.func, call.args, dict(call.keywords)
    return call, (), {}


def _key(name: str) -> str:
    import uuid

    return f"{name}-{uuid.uuid4().hex}"


# How long a scheduler that accepts connections has to answer the client's handshake.
CONNECT_TIMEOUT_SECONDS = 30
# How long the first look at a scheduler's address waits for its TCP connection.
PROBE_TIMEOUT_SECONDS = 5


def _connect(address: str) -> Any:
    """A client of the scheduler at ``address``.

    Raises:
        ExecutorError: the address is malformed, a ``tls://`` one has no TLS settings, or nothing answers there.
            A refused connection or a host that does not resolve fails at once: dask's client would try again for
            its whole timeout, and the run would wait that long to say so.
    """
    import socket

    from distributed import Client
    from distributed.comm import parse_address, parse_host_port
    from distributed.security import Security

    scheme, location = parse_address(address)
    if scheme in {"tcp", "tls"}:
        try:
            host, port = parse_host_port(location)  # as dask's client: no default port
        except ValueError as exc:
            raise ExecutorError(f"the dask scheduler address {address!r} is not HOST:PORT: {exc}") from None
        if not host or not 0 < port < 65536:
            raise ExecutorError(f"the dask scheduler address {address!r} needs a host and a port from 1 to 65535")
        if scheme == "tls" and Security().get_connection_args("client").get("ssl_context") is None:
            raise ExecutorError(
                f"the dask scheduler {address} is tls:// but the flow-run process has no dask TLS settings "
                "(distributed.comm.tls.ca-file, .client.cert and .client.key in its dask config, e.g. the "
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE environment variable): use tcp:// or configure them"
            )
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS).close()
        except TimeoutError:
            pass  # a slow network, perhaps: the client's own timeout decides
        except UnicodeError:  # "..": the IDNA codec refuses empty labels
            raise ExecutorError(f"the dask scheduler address {address!r} has no valid host name") from None
        except OSError as exc:
            reason = exc.strerror or describe(exc)
            raise ExecutorError(f"cannot reach the dask scheduler at {address}: {reason}") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, ValueError, TypeError) as exc:
        raise ExecutorError(f"cannot connect to the dask scheduler at {address}: {describe(exc)}") from None
