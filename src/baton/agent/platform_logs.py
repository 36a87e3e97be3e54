"""Lines a platform has for its runs' logs (a Kubernetes pod's events: scheduled, pulling, back-off...), shipped to
the API by one task of the agent.

A driver hands lines over from any thread (:meth:`PlatformLogs.add`, through ``DriverEvents.run_logs``); the task
posts them in batches to ``POST /api/flow_runs/{id}/logs`` with the agent's key (it may write the logs of the runs
its agents hold). Each line carries a key its driver derives from its source (an event's uid and count), so a line
sent twice (a retried batch, a relisted watch, an agent restarted) is stored once. What the API refuses (a run that
is no longer this agent's) is dropped; while the API cannot be reached, lines wait, at most
:data:`MAX_PENDING_PER_RUN` per run (the oldest go first). Under ``--no-cloud-logs`` nothing is sent.

Usage::

    logs = PlatformLogs(enabled=True)
    logs.add(run_id, [{"key": "k8s-...", "timestamp": "...", "level": 30, "name": "kubernetes", "message": "..."}])
    tasks.spawn(logs.ship(api), "platform logs")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from baton.agent.protocol import ApiCalls
from baton.exceptions import BatonError, ClientError
from baton.schemas.actions import MAX_LOGS_PER_BATCH

logger = logging.getLogger("baton.agent")

MAX_PENDING_PER_RUN = 500
_RETRY_SECONDS = 5.0


class PlatformLogs:
    """The platform's lines waiting to be sent, per run. :meth:`add` is thread-safe; :meth:`ship` is the task.

    Args:
        enabled: False under ``--no-cloud-logs``: lines are dropped as they come.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.sent = 0
        self.dropped = 0

    def add(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        """Queue ``entries`` (``LogEntry`` fields) for run ``run_id``'s logs. Thread-safe; never blocks."""
        if not self.enabled or not entries:
            return
        with self._lock:
            queue = self._pending.setdefault(run_id, [])
            queue.extend(entries)
            if len(queue) > MAX_PENDING_PER_RUN:
                self.dropped += len(queue) - MAX_PENDING_PER_RUN
                del queue[: len(queue) - MAX_PENDING_PER_RUN]
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the agent is gone
                loop.call_soon_threadsafe(wake.set)

    def pending(self) -> int:
        with self._lock:
            return sum(len(queue) for queue in self._pending.values())

    async def ship(self, api: ApiCalls) -> None:
        """Send what comes, until cancelled (the agent leaving)."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            if not await self._send_all(api):
                await asyncio.sleep(_RETRY_SECONDS)  # the API does not answer: the lines wait
                continue
            await self._wake.wait()
            self._wake.clear()

    async def _send_all(self, api: ApiCalls) -> bool:
        """Send every queued line; False when the API could not be reached (the rest stays queued)."""
        with self._lock:
            batches, self._pending = list(self._pending.items()), {}
        for index, (run_id, entries) in enumerate(batches):
            for start in range(0, len(entries), MAX_LOGS_PER_BATCH):
                batch = entries[start : start + MAX_LOGS_PER_BATCH]
                try:
                    await api.call(f"logs of run {run_id}", api.client.write_logs, run_id, batch, duty="logs")
                except ClientError as exc:  # not this agent's run any more, or a line refused: drop them
                    logger.debug("run %s: %d platform log line(s) refused: %s", run_id, len(entries) - start, exc)
                    self.dropped += len(entries) - start
                    break
                except BatonError as exc:
                    logger.warning("platform log lines wait: the API fails: %s", exc)
                    self._requeue([(run_id, entries[start:]), *batches[index + 1 :]])
                    return False
                self.sent += len(batch)
        return True

    def _requeue(self, unsent: list[tuple[str, list[dict[str, Any]]]]) -> None:
        with self._lock:
            for run_id, entries in unsent:
                self._pending[run_id] = entries + self._pending.get(run_id, [])
