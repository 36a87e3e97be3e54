"""Task-run states shipped in batches by one thread (issue 14): what a flow of many small tasks waits for is its
tasks, not three API calls per task.

A state is queued with the time it happened (``at``) and the calling thread goes on; one sender thread posts what
has queued (``POST /api/flow_runs/{id}/task_runs/states``, up to :data:`MAX_TASK_RUN_STATES` a request), and while a
request is under way the next states gather for the one after. So an idle flow's state leaves at once, and a busy
one's states share requests: no timer and no added delay. States leave in the order they were queued, one request
at a time, so a task run's Running is applied before its Success. :meth:`StateBatches.flush` waits until everything
queued has been sent: the runner flushes before the flow run's final state, so that no task run is seen open after
its run ended.

A batch the API cannot take after :func:`~baton.engine.retry.call_with_retry`'s retries is logged and dropped, as
a state set one at a time was: a reporting failure never fails a task.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from baton.client.http import Client
from baton.engine.limits import MAX_TASK_RUN_STATES
from baton.engine.retry import call_with_retry
from baton.exceptions import ClientError, ServerUnavailableError

logger = logging.getLogger("baton.engine")


class StateBatches:
    """Queues task-run states of ``flow_run_id`` and sends them in batches from a thread of its own.

    Args:
        client: the API client (the run token).
        flow_run_id: the run whose task runs the states are of.
        retry_seconds: how long each batch is retried while the API is unavailable.
    """

    def __init__(self, client: Client, flow_run_id: str, retry_seconds: float = 30.0) -> None:
        self._client = client
        self._flow_run_id = flow_run_id
        self._retry_seconds = retry_seconds
        self._changed = threading.Condition()
        self._queue: list[dict[str, Any]] = []
        self._sending = 0  # states taken from the queue and not yet answered
        self._thread: threading.Thread | None = None

    def add(self, state: dict[str, Any]) -> None:
        """Queue ``state`` (``TaskRunStateItem`` fields); never blocks on the API."""
        with self._changed:
            self._queue.append(state)
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._send_forever, name="baton-task-states", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every state queued so far has been sent (or given up on); False if ``timeout`` passed."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._sending, timeout)

    def _send_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue))
                batch = self._queue[:MAX_TASK_RUN_STATES]
                del self._queue[:MAX_TASK_RUN_STATES]
                self._sending = len(batch)
            try:
                self._send(batch)
            except Exception:  # the sender must outlive anything: a dead one would leave flush() waiting for ever
                logger.exception("Could not record %d task-run states", len(batch))
            finally:
                with self._changed:
                    self._sending = 0
                    self._changed.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        def post() -> Any:
            return self._client.set_task_run_states(self._flow_run_id, batch)

        try:
            result = call_with_retry(
                post, what=f"record {len(batch)} task-run states", timeout_seconds=self._retry_seconds
            )
        except (ServerUnavailableError, ClientError) as exc:
            logger.warning("Could not record %d task-run states: %s", len(batch), exc)
            return
        if result.missing:
            logger.warning("Task runs not found for their states: %s", ", ".join(result.missing[:10]))
