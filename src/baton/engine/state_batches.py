"""Task-run states shipped in batches by one thread (issue 14): what a flow of many small tasks waits for is its tasks,
not three API calls per task.

A state is queued with the time it happened (``at``) and the calling thread goes on; one sender thread posts what
has queued (``POST /api/flow_runs/{id}/task_runs/states``, up to :data:`MAX_TASK_RUN_STATES` states a request; a
state whose message is longer than a batch takes goes alone, in its place), and while a request is under way the
next states gather for the one after. So an idle flow's state leaves at once, and a busy one's states share
requests: no timer and no added delay. States leave in the order they were queued, one request at a time, so a task
run's Running is applied before its Success. :meth:`StateBatches.flush` waits until everything queued has been sent:
the runner flushes before the flow run's final state, so that no task run is seen open after its run ended.

A batch the API cannot take after :func:`~baton.engine.retry.call_with_retry`'s retries is logged and dropped, as a
state set one at a time was: a reporting failure never fails a task. A server older than the route (404) gets every
state on its own from then on (``POST /api/task_runs/{id}/state``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from baton.client.http import Client
from baton.engine.limits import MAX_BATCH_MESSAGE_LENGTH, MAX_TASK_RUN_STATES
from baton.engine.retry import call_with_retry
from baton.engine.threads import block_stop_signals
from baton.exceptions import ClientError, NotFoundError, ServerUnavailableError

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
        self._one_by_one = False  # the server has no batch route

    def add(self, state: dict[str, Any]) -> None:
        """Queue ``state`` (``TaskRunStateItem`` fields); never blocks on the API."""
        with self._changed:
            self._queue.append(state)
            self._changed.notify_all()
            self._ensure_sender()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every state queued so far has been sent (or given up on); False if ``timeout`` passed.

        Without a sender thread (none could be started), the states are sent from the calling thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._changed.notify_all()  # a state queued by a thread interrupted before it could wake the sender
            self._ensure_sender()
            alive = self._thread is not None and self._thread.is_alive()
        if not alive:
            while True:
                with self._changed:
                    batch = self._take()
                if not batch:
                    return True
                self._send(batch)
        with self._changed:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._changed.wait_for(lambda: not self._queue and not self._sending, remaining)

    def _ensure_sender(self) -> None:
        """Start the sender if there is none (first use, or it died); called with the lock held."""
        if self._thread is not None and self._thread.is_alive():
            return
        thread = threading.Thread(target=self._send_forever, name="baton-task-states", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": flush() sends from its own thread instead
            logger.warning("Task-run states will be sent at the flow's end: %s", exc)
            return
        self._thread = thread

    def _take(self) -> list[dict[str, Any]]:
        """The next batch from the queue, in order (called with the lock held)."""
        batch = self._queue[:MAX_TASK_RUN_STATES]
        del self._queue[:MAX_TASK_RUN_STATES]
        return batch

    def _send_forever(self) -> None:
        block_stop_signals()  # SIGTERM is the flow's thread's to handle
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue))
                batch = self._take()
                self._sending = len(batch)
            try:
                self._send(batch)
            except Exception:  # the sender must outlive anything: a dead one would leave flush() waiting
                logger.exception("Could not record %d task-run states", len(batch))
            finally:
                with self._changed:
                    self._sending = 0
                    self._changed.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        """``batch`` in order: runs of states in batch requests, a state whose message is too long for one alone."""
        if self._one_by_one:
            self._send_one_by_one(batch)
            return
        run: list[dict[str, Any]] = []
        for state in batch:
            if len(state.get("message") or "") <= MAX_BATCH_MESSAGE_LENGTH:
                run.append(state)
                continue
            if run:
                self._send_batch(run)
                run = []
            self._send_one_by_one([state])
        if run:
            self._send_batch(run)

    def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        if self._one_by_one:
            self._send_one_by_one(batch)
            return

        def post() -> Any:
            return self._client.set_task_run_states(self._flow_run_id, batch)

        try:
            what = f"record {len(batch)} task-run states"
            result = call_with_retry(post, what=what, timeout_seconds=self._retry_seconds)
        except NotFoundError:
            # The run is there (it answers heartbeats): a server from before the route. One request each, as then.
            logger.info("The API has no batch route for task-run states: sending them one at a time")
            self._one_by_one = True
            self._send_one_by_one(batch)
            return
        except (ServerUnavailableError, ClientError) as exc:
            logger.warning("Could not record %d task-run states: %s", len(batch), exc)
            return
        if result.missing:
            logger.warning("Task runs not found for their states: %s", ", ".join(result.missing[:10]))

    def _send_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        for state in batch:

            def post(state: dict[str, Any] = state) -> Any:
                return self._client.set_task_run_state(
                    state["task_run_id"], state["state"], state.get("message"), state.get("attempt")
                )

            try:
                call_with_retry(post, what=f"set task run {state['task_run_id']}", timeout_seconds=self._retry_seconds)
            except (ServerUnavailableError, ClientError) as exc:
                logger.warning(
                    "Could not record state %s of task run %s: %s", state["state"], state["task_run_id"], exc
                )
