"""Ship a flow run's print output and ``logging`` records to the API, in batches, from a background thread.

Every line also goes to the real stdout/stderr, so an agent started with ``--show-flow-logs`` still shows it.
No line is dropped silently (issue 8, item 8: a flow printing 1,000,000 lines ended with 66,500 stored, because
a full buffer dropped its oldest lines): a full buffer makes the printing thread wait for the shipper
(backpressure), every line is sent once and in order, network errors are retried with backoff, and the lines that
still cannot be sent (refused by the API, or left when the end-of-run flush deadline passes) are counted in
:attr:`LogShipper.dropped` with the reason, which the runner puts in the run's final state message. Lines past
the server's per-run quota are counted by the server, which says so in a marker line and the final message.

Usage::

    shipper = LogShipper(client, flow_run_id, batch_interval=1.0, batch_size=500)
    with shipper, ship_output(shipper):
        ...  # run the flow
    # leaving the shipper's block flushed the last lines
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from baton.client.http import Client
from baton.engine.limits import MAX_LOG_NAME_LENGTH, MAX_LOGS_PER_BATCH, MAX_MESSAGE_LENGTH
from baton.engine.retry import backoff_delay
from baton.engine.threads import block_stop_signals
from baton.exceptions import ClientError, ServerUnavailableError
from baton.sdk.context import current_task_run_id

# Loggers whose records are never shipped: the API client logs each request at DEBUG, shipping included, so
# shipping its records would feed itself.
_NOT_SHIPPED = "baton.client"


def _real_stderr() -> IO[str]:
    return sys.__stderr__ or sys.stderr


def note(message: str) -> None:
    """A problem of the shipper itself: straight to the real stderr, never through logging (it would loop)."""
    # The reader of stderr may be gone (an agent showing flow logs exited): the shipper thread must live on.
    with contextlib.suppress(OSError, ValueError):
        print(f"baton.engine: {message}", file=_real_stderr(), flush=True)


def storable(text: str) -> str:
    """``text`` with what the API refuses in text replaced: NUL (PostgreSQL cannot store it) and lone surrogates
    (bytes of a file name decoded with ``surrogateescape``). One such line must not cost its whole batch."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# At most this many characters (messages and names) of kept lines go with the final state: the request stays far
# below the server's body limit (10 MB by default), whatever the lines.
KEEP_CHARACTERS = 256 * 1024


def _size(entries: deque[dict[str, Any]]) -> int:
    return sum(len(entry["message"]) + len(entry["name"]) for entry in entries)


class LogShipper:
    """Buffers log entries and sends them with ``Client.write_logs`` from its own thread.

    Args:
        client: the API client (thread-safe).
        flow_run_id: the run whose logs these are.
        batch_interval: send at least this often (seconds) while there are lines.
        batch_size: send as soon as this many lines wait (at most the API's limit per batch).
        max_buffer: lines kept waiting; when it is full, ``emit`` waits for the shipper (backpressure).
        flush_timeout: how long closing may spend sending what is left; lines left after it are counted dropped.
    """

    def __init__(
        self,
        client: Client,
        flow_run_id: str,
        *,
        batch_interval: float = 1.0,
        batch_size: int = 500,
        max_buffer: int = 20_000,
        flush_timeout: float = 15.0,
    ) -> None:
        self._client = client
        self._flow_run_id = flow_run_id
        self._interval = batch_interval
        self._batch_size = max(1, min(batch_size, MAX_LOGS_PER_BATCH))
        self._max_buffer = max(max_buffer, self._batch_size)
        self._flush_timeout = flush_timeout
        self._buffer: deque[dict[str, Any]] = deque()
        self._dropped = 0
        self._drop_reasons: dict[str, int] = {}
        self._in_flight = 0  # lines of the batch being sent
        lock = threading.Lock()
        self._condition = threading.Condition(lock)  # lines to send, or closing
        self._room = threading.Condition(lock)  # room in the buffer
        self._closing = False
        self._keep = 0  # when closing, this many last lines (or fewer) stay unsent, for close() to return
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="baton-log-shipper", daemon=True)
        self.sent = 0
        self.dropped_by_server = 0  # lines past the run's quota: the server counts and reports them

    @property
    def dropped(self) -> int:
        """Lines that could not be sent to the API (not counting those the server dropped past its quota)."""
        with self._condition:
            return self._dropped

    def drop_summary(self) -> str | None:
        """One sentence on the lines that could not be sent and why, for the run's final state message."""
        with self._condition:
            if not self._dropped:
                return None
            reasons = "; ".join(f"{count} {reason}" for reason, count in self._drop_reasons.items())
            return f"{self._dropped} log lines could not be sent to the API ({reasons})"

    def __enter__(self) -> LogShipper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()

    def emit(self, level: int, name: str, message: str, task_run_id: str | None = None) -> None:
        """Queue one line (thread-safe). Waits while the buffer is full, so lines are never dropped for want of
        room. Ignored once closing has begun (the line still went to the real stream)."""
        entry = {
            "key": uuid.uuid4().hex,  # lets the API drop a line sent twice by a retried batch
            "timestamp": datetime.now(UTC).isoformat(),
            "level": level,
            "name": storable(name[:MAX_LOG_NAME_LENGTH]),
            "message": storable(message[:MAX_MESSAGE_LENGTH]),
            "task_run_id": task_run_id,
        }
        with self._condition:
            while len(self._buffer) >= self._max_buffer and self._may_wait_for_room():
                self._room.wait(0.5)
            if self._closing:
                return
            self._buffer.append(entry)
            if len(self._buffer) >= self._batch_size:
                self._condition.notify()

    def _may_wait_for_room(self) -> bool:
        """Waiting for room makes sense only while a running shipper thread, other than this one, empties it
        (a line logged by the shipper thread itself must not wait for itself)."""
        shipper = self._thread
        return not self._closing and shipper.is_alive() and threading.current_thread() is not shipper

    def close(self, keep: int = 0) -> list[dict[str, Any]]:
        """Send what is left (for at most ``flush_timeout`` seconds) and stop the thread.

        With ``keep``, the last lines, up to ``keep``, never more than a batch nor :data:`KEEP_CHARACTERS`, are not
        sent but returned, in order and after every line sent: the runner sends them with the run's final state,
        one request less.
        """
        with self._condition:
            if self._closing:
                return []
            self._closing = True
            self._keep = max(0, min(keep, self._batch_size))
            self._deadline = time.monotonic() + self._flush_timeout
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(self._flush_timeout + 5)
        with self._condition:
            if self._thread.is_alive():  # stuck in a call past the deadline: its batch and the rest are lost
                unsent = len(self._buffer) + self._in_flight
                self._in_flight = 0  # counted here, so not again should the call still end
                if unsent:
                    self._count_dropped_locked(unsent, "left when the flush deadline passed")
                self._buffer.clear()
            kept = list(self._buffer)[-self._keep :] if self._keep else []
            if len(self._buffer) > len(kept):  # the thread never ran, or died
                self._count_dropped_locked(len(self._buffer) - len(kept), "left unsent when the shipper stopped")
            self._buffer.clear()
            self._room.notify_all()
        summary = self.drop_summary()
        if summary:
            note(f"{summary}; in all")
        return kept

    def _run(self) -> None:
        block_stop_signals()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                with self._condition:
                    self._in_flight = len(batch)
                self._send(batch)
                with self._condition:
                    self._in_flight = 0

    def _next_batch(self) -> list[dict[str, Any]] | None:
        """Wait for a full batch or the interval; None when closing and nothing is left (or no time is left)."""
        with self._condition:
            if not self._closing and len(self._buffer) < self._batch_size:
                self._condition.wait(self._interval)
            if self._closing and self._buffer and self._deadline is not None and time.monotonic() > self._deadline:
                self._count_dropped_locked(len(self._buffer), "left when the flush deadline passed")
                self._buffer.clear()
            if self._closing and len(self._buffer) <= self._keep and _size(self._buffer) <= KEEP_CHARACTERS:
                return None
            count = min(len(self._buffer), self._batch_size)
            batch = [self._buffer.popleft() for _ in range(count)]
            self._room.notify_all()
            return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        attempt = 0
        while True:
            try:
                written = self._client.write_logs(self._flow_run_id, batch)
            except ServerUnavailableError as exc:
                attempt += 1
                if not self._wait_before_retry(attempt):
                    self._count_dropped(len(batch), f"unsent: the API was unavailable ({exc})")
                    note(f"could not send {len(batch)} log lines: {exc}")
                    return
            except ClientError as exc:  # refused: sending the same lines again would be refused again
                self._count_dropped(len(batch), f"refused by the API ({exc})")
                note(f"the API refused {len(batch)} log lines: {exc}")
                return
            else:
                self.sent += len(batch) - written.dropped
                self.dropped_by_server += written.dropped
                return

    def _wait_before_retry(self, attempt: int) -> bool:
        """Sleep before a retry; False when closing and the flush deadline leaves no time for one."""
        delay = backoff_delay(attempt)
        with self._condition:
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return False
                delay = min(delay, remaining)
            self._condition.wait(delay)
        return True

    def _count_dropped(self, count: int, reason: str) -> None:
        with self._condition:
            self._count_dropped_locked(count, reason)

    def _count_dropped_locked(self, count: int, reason: str) -> None:
        self._dropped += count
        # The first reason of each kind is kept (the text after the colon varies with each error).
        kind = reason.split(" (", 1)[0]
        known = next((r for r in self._drop_reasons if r.split(" (", 1)[0] == kind), reason)
        self._drop_reasons[known] = self._drop_reasons.get(known, 0) + count


class StreamTee:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes through to the real stream and ships whole lines.

    Partial lines are kept per thread, so two threads printing at once do not mix their lines.
    """

    def __init__(self, stream: IO[str], shipper: LogShipper, level: int, name: str) -> None:
        self._stream = stream
        self._shipper = shipper
        self._level = level
        self._name = name
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        try:
            written = self._stream.write(text)
        except BrokenPipeError:
            written = self._to_devnull(text)
        thread = threading.get_ident()
        with self._lock:
            pending = self._partial.pop(thread, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[thread] = rest
        for line in lines:
            self._shipper.emit(self._level, self._name, line.rstrip("\r"), current_task_run_id())
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull("")

    def _to_devnull(self, text: str) -> int:
        """The reader of the real stream is gone (an agent showing flow logs, ``-f``, exited): point the stream's
        file descriptor at /dev/null and go on. The run's lines still reach the API; a flow must outlive its
        agent, and must not fail on a print (nor exit 120 when Python flushes stdout at exit)."""
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what the pipe refused now goes to /dev/null, so later writes start clean
        return len(text)

    def finish(self) -> None:
        """Ship the lines left without a final newline."""
        with self._lock:
            rest, self._partial = list(self._partial.values()), {}
        for line in rest:
            self._shipper.emit(self._level, self._name, line, current_task_run_id())

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer...: the real stream's
        return getattr(self._stream, name)


class ApiLogHandler(logging.Handler):
    """A logging handler that queues records on a :class:`LogShipper`, tagged with the current task run."""

    def __init__(self, shipper: LogShipper, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._shipper = shipper
        self.setFormatter(logging.Formatter("%(message)s"))  # the API stores level, name and time apart

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _NOT_SHIPPED or record.name.startswith(_NOT_SHIPPED + "."):
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # a bad %-format in user code: logging's own policy is to report and go on
            self.handleError(record)
            return
        self._shipper.emit(record.levelno, record.name, message, current_task_run_id())


@contextmanager
def console_logging(level: str = "INFO") -> Iterator[None]:
    """Inside the block, logging records at ``level`` and above go to the real stderr (``--show-flow-logs``)."""
    root = logging.getLogger()
    saved_level = root.level
    console = logging.StreamHandler(_real_stderr())
    console.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s | %(message)s"))
    root.addHandler(console)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(console)
        root.setLevel(saved_level)


@contextmanager
def ship_output(shipper: LogShipper) -> Iterator[None]:
    """Inside the block, print output and logging records also go to ``shipper``.

    ``sys.stdout`` and ``sys.stderr`` are replaced by tees (lines still reach the real streams) and the root
    logger gets a handler that ships records. Everything is put back when the block ends.
    """
    root = logging.getLogger()
    handler = ApiLogHandler(shipper)
    tees = (
        StreamTee(sys.stdout, shipper, logging.INFO, "stdout"),
        StreamTee(sys.stderr, shipper, logging.WARNING, "stderr"),
    )
    saved_streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = tees  # duck-typed text streams
    root.addHandler(handler)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved_streams
        for tee in tees:
            tee.finish()
        root.removeHandler(handler)
