"""One attempt of a task in a process of its own, forked from the flow's (``ProcessExecutor``, issue 14).

Forked, the child has the flow's code and the task's arguments already in memory: nothing is pickled on the way
in, so tasks and arguments need not be picklable, only results and errors on the way back. The child runs the
function alone: the flow process's threads (heartbeat, log shipping) do not exist in it and its signal handlers are
reset, so it never reports to the API and never holds the run token's client. What it logs and prints is captured
and sent back with the outcome; the flow's process replays it as the task run's lines. A timeout or a cancellation
kills the child (SIGKILL): unlike a thread, a process can be stopped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

_FORK = multiprocessing.get_context("fork")


class TaskProcessDied(Exception):
    """The process running a task attempt ended without an outcome (killed, out of memory, os._exit)."""


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[tuple[int, str, str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.levelno, record.name, self.format(record), record.created))
        except Exception:  # a record that cannot be formatted is not worth the attempt
            self.handleError(record)


def _child(writer: multiprocessing.connection.Connection, call: Callable[[], Any]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    capture = _Capture()
    capture.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers = [capture]  # the flow process's handlers ship through threads this process does not have
    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    try:
        payload: tuple[str, Any] = ("ok", call())
    except BaseException as exc:  # the attempt's outcome: the flow's process decides about retries
        payload = ("error", exc)
    lines = {"logs": capture.records, "stdout": out.getvalue(), "stderr": err.getvalue()}
    try:
        writer.send_bytes(pickle.dumps((payload, lines)))
    except Exception as exc:  # e.g. a result that cannot be pickled: told as the attempt's error
        what = "result" if payload[0] == "ok" else "error"
        problem = RuntimeError(f"the task's {what} cannot be sent back from its process: {exc}")
        writer.send_bytes(pickle.dumps((("error", problem), lines)))
    writer.close()


class Children:
    """The processes running attempts now: killed all at once when the flow run stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[multiprocessing.process.BaseProcess] = set()
        self.stopped = False

    def run(self, call: Callable[[], Any], timeout: float | None, name: str) -> Any:
        """``call()`` in a forked process: its result, or its error raised here; its lines replayed here.

        Raises:
            TimeoutError: it ran past ``timeout`` seconds (the process is killed).
            TaskProcessDied: the process ended without an outcome.
        """
        reader, writer = _FORK.Pipe(duplex=False)
        process = _FORK.Process(target=_child, args=(writer, call), name=f"baton-task-{name}", daemon=True)
        with self._lock:
            if self.stopped:
                raise TaskProcessDied("the flow run stopped before the task's process started")
            process.start()
            self._live.add(process)
        writer.close()
        try:
            if not reader.poll(timeout):
                _kill(process)
                raise TimeoutError(f"task {name!r} did not finish within {timeout:g}s: its process was killed")
            try:
                # From our own child through its own pipe: the flow's code, which this process runs anyway.
                payload, lines = pickle.loads(reader.recv_bytes())  # noqa: S301
            except EOFError:
                process.join()
                raise TaskProcessDied(
                    f"the process of task {name!r} ended (exit code {process.exitcode}) without an outcome"
                ) from None
        finally:
            reader.close()
            process.join(5)
            _kill(process)
            with self._lock:
                self._live.discard(process)
        replay(lines)
        kind, value = payload
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            live = list(self._live)
        for process in live:
            _kill(process)


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive() and process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.join(5)


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
