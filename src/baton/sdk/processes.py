"""One attempt of a task in a process of its own, forked from the flow's (``ProcessExecutor``, issue 14).

Forked, the child has the flow's code and the task's arguments already in memory: nothing is pickled on the way
in, so tasks and arguments need not be picklable, only results and errors on the way back. One that cannot travel
(a lambda, a lock, an exception that cannot be rebuilt from its pickle) fails the attempt with
:class:`TaskTransferError`, which says what it was. The child runs the function alone: the flow process's threads
(heartbeat, log shipping) do not exist in it, so it never reports to the API and never holds the run token's
client: a task it calls directly, or submits, runs inline there, unrecorded. What it logs and prints is captured
(up to :data:`MAX_CAPTURED_CHARACTERS` per stream and :data:`MAX_CAPTURED_RECORDS` records, the rest counted in a
note) and sent back with the outcome; the flow's process replays it as the task run's lines.

The attempt's processes end with it. The forked child is a small supervisor: it forks the process that runs the
task and, on Linux, is its "child subreaper", so that what the task starts, even a daemon that forked twice, stays
in its tree; when the task's process ends, however it ends (``os._exit``, a signal), the supervisor kills what is
left and exits as the task's process did. A timeout or a cancellation kills the whole tree (SIGKILL): unlike a
thread, a process can be stopped. SIGTERM and SIGINT do not end them, the death of the flow's process does
(:mod:`baton.sdk.process_tree`).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from baton.sdk.futures import describe
from baton.sdk.process_tree import kill_tree, supervise

logger = logging.getLogger("baton.sdk")
_FORK = multiprocessing.get_context("fork")
# What one attempt keeps of its prints (per stream) and log records until it ends, in its own memory: a task that
# prints gigabytes must not take the flow's process (which replays and ships them) down with it.
MAX_CAPTURED_CHARACTERS = 1_000_000
MAX_CAPTURED_RECORDS = 10_000


class TaskProcessDied(Exception):
    """The process running a task attempt ended without an outcome (killed, out of memory, os._exit)."""


class TaskTransferError(RuntimeError):
    """What a task attempt sends or returns cannot travel: its arguments to a dask cluster, its result or error back
    to the flow's process (from a forked process, or from a dask worker). The attempt fails with this instead,
    saying what could not travel and why."""


class BoundedText(io.TextIOBase):
    """A text stream keeping the first ``limit`` characters written to it; it counts the rest."""

    def __init__(self, limit: int = MAX_CAPTURED_CHARACTERS) -> None:
        super().__init__()
        self._limit = limit
        self._parts: list[str] = []
        self._kept = 0
        self.dropped = 0
        self._bytes: _DecodedInto | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        room = max(0, self._limit - self._kept)
        if room:
            piece = text[:room]
            self._parts.append(piece)
            self._kept += len(piece)
        self.dropped += max(0, len(text) - room)
        return len(text)

    @property
    def buffer(self) -> io.RawIOBase:
        """Its binary side, as ``sys.stdout.buffer``'s: bytes written there are kept here, decoded."""
        if self._bytes is None:
            self._bytes = _DecodedInto(self)
        return self._bytes

    def getvalue(self) -> str:
        text = "".join(self._parts)
        if self.dropped:
            end = "" if text.endswith("\n") else "\n"
            text += f"{end}[baton: {self.dropped} more characters were dropped: an attempt keeps {self._limit}]\n"
        return text


class _DecodedInto(io.RawIOBase):
    """A binary stream writing into a text one: UTF-8 decoded (a character split across writes too), invalid bytes
    replaced."""

    def __init__(self, text: io.TextIOBase) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._text.write(self._decoder.decode(chunk))
        return len(chunk)


class RecordCapture(logging.Handler):
    """Keeps the first ``limit`` log records of an attempt as ``(level, logger, message, time)``; counts the rest."""

    def __init__(self, limit: int = MAX_CAPTURED_RECORDS) -> None:
        super().__init__(logging.NOTSET)
        self._limit = limit
        self.records: list[tuple[int, str, str, float]] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) >= self._limit:
            self.dropped += 1
            return
        try:
            self.records.append((record.levelno, record.name, self.format(record), record.created))
        except Exception:  # a record that cannot be formatted is not worth the attempt
            self.handleError(record)

    def kept(self) -> list[tuple[int, str, str, float]]:
        if not self.dropped:
            return self.records
        note = f"{self.dropped} more log records were dropped: an attempt keeps {self._limit}"
        return [*self.records, (logging.WARNING, "baton.task", note, time.time())]


def _pack(payload: tuple[str, Any]) -> bytes:
    """``payload`` (``("ok", result)`` or ``("error", exc)``) pickled; when it cannot be (or, for an error, cannot be
    rebuilt from its pickle: an exception class with required ``__init__`` arguments), the attempt's error is a
    :class:`TaskTransferError` that names it instead."""
    try:
        data = pickle.dumps(payload)
        if payload[0] == "error":  # small: rebuilt here, where the error's text is still at hand to tell
            pickle.loads(data)  # noqa: S301 - bytes made a line above
        return data
    except BaseException as problem:  # a user's __reduce__ may raise anything: told as the attempt's error
        return pickle.dumps(("error", outcome_error(payload, problem, "its process")))


def outcome_error(payload: tuple[str, Any], problem: BaseException, where: str) -> TaskTransferError:
    """The error of an attempt whose ``payload`` cannot be sent back from ``where`` because of ``problem``."""
    kind, value = payload
    if kind == "ok":
        what = f"the task's result (a {type(value).__name__})"
    else:
        what = f"the task raised {describe(value)}, which"
    return TaskTransferError(f"{what} cannot be sent back from {where}: {describe(problem)}")


def _child(writer: multiprocessing.connection.Connection, call: Callable[[], Any], flow_pid: int) -> None:
    """The supervisor (see :mod:`baton.sdk.process_tree`): the task in a process of its own, then how it ended
    told on the pipe (after its outcome, if it sent one): ``("ended", exit code)``."""
    code = supervise(functools.partial(_attempt, writer, call), flow_pid)
    if code is not None:
        with contextlib.suppress(OSError):  # the flow's process may have read the outcome and closed the pipe
            writer.send_bytes(pickle.dumps(("ended", code)))
    os._exit(0)


def _attempt(writer: multiprocessing.connection.Connection, call: Callable[[], Any]) -> None:
    _alone()
    capture = RecordCapture()
    capture.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers = [capture]  # the flow process's handlers ship through threads this process does not have
    out, err = BoundedText(), BoundedText()
    sys.stdout, sys.stderr = out, err
    try:
        payload: tuple[str, Any] = ("ok", call())
    except BaseException as exc:  # the attempt's outcome: the flow's process decides about retries
        payload = ("error", exc)
    data = _pack(payload)
    # The lines first, apart: they are replayed even when the outcome cannot be rebuilt in the flow's process.
    writer.send_bytes(pickle.dumps({"logs": capture.kept(), "stdout": out.getvalue(), "stderr": err.getvalue()}))
    writer.send_bytes(data)
    writer.close()


def _alone() -> None:
    """The task's process, forked from a thread of the flow's, as a process of its own: a task it calls directly
    runs here, inline and unrecorded (the flow's API client and its threads are not in this process, and forking
    again would wait for ever on the lock the forking thread held), so does one it submits; and it may start
    processes of its own (``multiprocessing.Pool``), which a daemonic process may not."""
    from baton.sdk import futures, tasks
    from baton.sdk.context import NoopReporter, _reporter

    tasks._attempts_on.set(None)
    futures._submissions.set(None)
    _reporter.set(NoopReporter())
    multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]  # no public setter


class Children:
    """The processes running attempts now: killed all at once when the flow run stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[multiprocessing.process.BaseProcess] = set()
        self.stopped = False

    def run(self, call: Callable[[], Any], timeout: float | None, name: str) -> Any:
        """``call()`` in a forked process: its result, or its error raised here; its lines replayed here.

        Raises:
            TimeoutError: it ran past ``timeout`` seconds (its processes are killed).
            TaskProcessDied: the process ended without an outcome.
            TaskTransferError: the outcome cannot travel back.
        """
        reader, writer = _FORK.Pipe(duplex=False)
        args = (writer, call, os.getpid())
        process = _FORK.Process(target=_child, args=args, name=f"baton-task-{name}", daemon=True)
        try:
            with self._lock:
                if self.stopped:
                    raise TaskProcessDied("the flow run stopped before the task's process started")
                process.start()  # may fail: no memory, too many processes
                self._live.add(process)
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()
        try:
            lines, outcome = _receive(process, reader, timeout, name)
        finally:
            reader.close()
            process.join(5)
            kill_tree(process)
            with self._lock:  # with stop(), which must never meet a closed process in _live
                self._live.discard(process)
                # Its sentinel's descriptor, else held until the raised error's traceback (holding this frame) dies.
                with contextlib.suppress(ValueError):  # still running: a process that SIGKILL did not end in 5 s
                    process.close()
        if lines is not None:
            replay(lines)
        kind, value = outcome
        if kind == "ok":
            return value
        raise value

    def stop(self) -> None:
        # Under the lock: an attempt ending meanwhile closes its process object only once it is out of _live.
        with self._lock:
            self.stopped = True
            for process in self._live:
                try:
                    kill_tree(process)
                except Exception:  # one tree that cannot be killed must not spare the others
                    logger.exception("Could not kill the processes of %s", process.name)


def _receive(
    process: multiprocessing.process.BaseProcess,
    reader: multiprocessing.connection.Connection,
    timeout: float | None,
    name: str,
) -> tuple[dict[str, Any] | None, tuple[str, Any]]:
    """The attempt's lines (None when it sent none) and its outcome: ``("ok", result)`` or ``("error", exc)``, a
    :class:`TaskProcessDied` when the task's process ended without one. The supervisor's end is watched beside the
    pipe: if it is killed from outside, the task's processes may hold the pipe open without writing."""
    ready = multiprocessing.connection.wait([reader, process.sentinel], timeout)
    if not ready:
        kill_tree(process)
        raise TimeoutError(f"task {name!r} did not finish within {timeout:g}s: its process was killed")
    lines: dict[str, Any] | None = None
    code: int | None = None
    if reader in ready or reader.poll(0):
        try:
            # From our own child through its own pipe: the flow's code, which this process runs anyway.
            first = pickle.loads(reader.recv_bytes())  # noqa: S301
            if isinstance(first, dict):
                lines = first
                outcome = _outcome(reader.recv_bytes(), name)
            else:
                outcome = first
            if outcome[0] != "ended":
                return lines, outcome
            code = outcome[1]
        except EOFError:
            pass  # the supervisor was killed too (out of memory, an operator)
    if code is None:
        process.join(5)
        code = process.exitcode
    return lines, ("error", TaskProcessDied(f"the process of task {name!r} {_ending(code)} without an outcome"))


def _outcome(data: bytes, name: str) -> tuple[str, Any]:
    try:
        outcome: tuple[str, Any] = pickle.loads(data)  # noqa: S301 - as in _receive
    except Exception as problem:  # e.g. a result whose class's __setstate__ raises
        message = f"the result of task {name!r} came back from its process but cannot be rebuilt: {describe(problem)}"
        return "error", TaskTransferError(message)
    return outcome


def _ending(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
    return f"ended (exit code {code})"


def replay(lines: dict[str, Any]) -> None:
    """The child's lines as this process's: they reach the run's logs as the current task run's."""
    for levelno, name, message, created in lines["logs"]:
        record = logging.makeLogRecord({"name": name, "levelno": levelno, "levelname": logging.getLevelName(levelno)})
        record.msg, record.args, record.created = message, None, created
        logging.getLogger(name).handle(record)
    for stream, text in ((sys.stdout, lines["stdout"]), (sys.stderr, lines["stderr"])):
        if text:
            stream.write(text)
            stream.flush()
