"""Records task runs through the API for the SDK's tasks (``baton.sdk.context.TaskRunReporter``).

A reporting failure never fails the task: it is logged, and the task goes on unrecorded. A task run is created at
once (its id is needed); its states are queued with the time they happened and shipped in batches by a thread of
their own (``state_batches.py``). Each call is retried while the API is unavailable
(:func:`~baton.engine.retry.call_with_retry`); a creation runs inside the ``shield`` the runner gives
(:meth:`baton.engine.cancel.CancelSignal.deferred`), so that a stop never cuts it in half. A stop may still end a
task before it could record Cancelled: the runner then ends the task runs left open with
:meth:`ApiTaskRunReporter.end_open`, which also sends what is still queued.

A task run whose creation went through but whose answer was lost is not created twice: the retry first looks
for a task run of that name, in the state it was created in, that this process has not been told of and that was
created since this process started (:data:`ADOPT_SKEW` allows for the clocks of the server and this process
differing), and adopts it. A run's task runs outlive its attempts: one that an earlier attempt left open (its
process killed) is older than that, since a lost attempt is retried only after its heartbeat timeout.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from baton.client.http import Client, may_have_reached_the_server
from baton.engine.limits import MAX_MESSAGE_LENGTH, MAX_TASK_RUNS_PER_CREATE
from baton.engine.logs import storable
from baton.engine.retry import call_with_retry
from baton.engine.state_batches import StateBatches
from baton.exceptions import ClientError, NotFoundError, ServerUnavailableError
from baton.schemas.core import utcnow
from baton.schemas.responses import TaskRunRead
from baton.schemas.states import TaskRunState

logger = logging.getLogger("baton.engine")

_FINAL = frozenset({TaskRunState.SUCCESS, TaskRunState.FAILED, TaskRunState.CANCELLED})
ADOPT_SKEW = timedelta(seconds=60)
# The longest the runner waits for queued task-run states before the flow run's final state.
FLUSH_SECONDS = 120.0


class ApiTaskRunReporter:
    """Creates task runs with ``Client.create_task_run`` (at once: the task run's id is needed) and sends their
    states in batches (:class:`~baton.engine.state_batches.StateBatches`); :meth:`flush` waits for those.

    Args:
        client: the API client, with the run token.
        flow_run_id: the flow run.
        retry_seconds: how long each call is retried while the API is unavailable.
        shield: wraps each attempt; a stop that arrives inside is raised when it ends.
    """

    def __init__(
        self,
        client: Client,
        flow_run_id: str,
        retry_seconds: float = 30.0,
        shield: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._client = client
        self._since = clock() - ADOPT_SKEW  # task runs created before are not this process's
        self._flow_run_id = flow_run_id
        self._retry_seconds = retry_seconds
        self._shield = shield
        self._lock = threading.Lock()
        self._known: set[str] = set()  # every task run this reporter created or adopted
        self._open: dict[str, int] = {}  # task run id -> attempt, until a final state is recorded
        self._ended: set[str] = set()  # ended by end_open: later states (a task thread finishing) are not sent
        self._clock = clock
        self._batches = StateBatches(client, flow_run_id, retry_seconds)
        self._one_by_one = False  # the server has no route to create task runs together

    def task_run_created(self, task_name: str, state: TaskRunState = TaskRunState.RUNNING) -> str | None:
        maybe_created = False

        def create() -> TaskRunRead:
            nonlocal maybe_created
            # Recorded inside the shield: a stop raised as it ends must find the new task run open, to end it.
            with self._shield():
                adopted = self._adopt_all([task_name], state) if maybe_created else None
                task_run = adopted[0] if adopted else None
                if task_run is None:
                    try:
                        task_run = self._client.create_task_run(self._flow_run_id, task_name, state)
                    except ServerUnavailableError as exc:
                        maybe_created = maybe_created or may_have_reached_the_server(exc)
                        raise
                with self._lock:
                    self._known.add(task_run.id)
                    self._open[task_run.id] = 1
                return task_run

        try:
            created = call_with_retry(
                create, what=f"record task run {task_name!r}", timeout_seconds=self._retry_seconds
            )
        except (ServerUnavailableError, ClientError) as exc:
            logger.warning("Task %r will run unrecorded: %s", task_name, exc)
            return None
        return created.id

    def task_runs_created(
        self, task_names: Sequence[str], state: TaskRunState = TaskRunState.PENDING
    ) -> list[str | None]:
        """Record several task runs at once (a map's children), one request per :data:`MAX_TASK_RUNS_PER_CREATE`;
        their ids in ``task_names``' order (None for those that could not be recorded)."""
        ids: list[str | None] = []
        for start in range(0, len(task_names), MAX_TASK_RUNS_PER_CREATE):
            ids += self._create_chunk(list(task_names[start : start + MAX_TASK_RUNS_PER_CREATE]), state)
        return ids

    def _create_chunk(self, names: list[str], state: TaskRunState) -> list[str | None]:
        maybe_created = False

        def create() -> list[TaskRunRead]:
            nonlocal maybe_created
            with self._shield():
                task_runs = self._adopt_all(names, state) if maybe_created else None
                if task_runs is None:
                    wanted = [{"task_name": name, "state": state.value} for name in names]
                    try:
                        task_runs = self._client.create_task_runs(self._flow_run_id, wanted)
                    except ServerUnavailableError as exc:
                        maybe_created = maybe_created or may_have_reached_the_server(exc)
                        raise
                with self._lock:
                    for task_run in task_runs:
                        self._known.add(task_run.id)
                        self._open[task_run.id] = 1
                return task_runs

        if self._one_by_one:
            return [self.task_run_created(name, state) for name in names]
        try:
            created = call_with_retry(
                create, what=f"record {len(names)} task runs", timeout_seconds=self._retry_seconds
            )
        except NotFoundError:  # a server from before the batch route: one request each, as then
            logger.info("The API has no batch route for task runs: creating them one at a time")
            self._one_by_one = True
            return [self.task_run_created(name, state) for name in names]
        except (ServerUnavailableError, ClientError) as exc:
            logger.warning("%d task runs (%r, ...) will run unrecorded: %s", len(names), names[0], exc)
            return [None] * len(names)
        return [task_run.id for task_run in created]

    def _adopt_all(self, names: list[str], state: TaskRunState) -> list[TaskRunRead] | None:
        """The task runs a creation whose answer was lost made, now known (before the lock is let go: a second lost
        creation must not take them); None when it did not go through (a batch is created all or none): for each
        name, the newest one of that name in ``state`` created since this reporter started and not known here."""
        found = sorted(self._client.list_task_runs(self._flow_run_id), key=lambda task_run: task_run.created)
        with self._lock:
            unknown = [t for t in found if t.state == state and t.id not in self._known and t.created >= self._since]
            by_name: dict[str, list[TaskRunRead]] = {}
            for task_run in unknown:
                by_name.setdefault(task_run.task_name, []).append(task_run)
            if any(len(by_name.get(name, [])) < names.count(name) for name in set(names)):
                return None
            adopted = [by_name[name].pop() for name in names]
            self._known.update(task_run.id for task_run in adopted)
        logger.info("%d task run(s) %r... created by a call whose answer was lost: using them", len(adopted), names[0])
        return adopted

    def task_run_state(
        self, task_run_id: str | None, state: TaskRunState, message: str | None = None, attempt: int = 1
    ) -> None:
        """Queue the state with the time it happened; :class:`StateBatches` sends it (the task goes on at once)."""
        if task_run_id is None or task_run_id in self._ended:
            return  # ended by a stop (end_open): a thread still running it reports nothing more
        # What the API refuses in a message would cost the whole batch it travels in: made storable, cut to size.
        text = None if message is None else storable(message)[:MAX_MESSAGE_LENGTH]
        item = {"task_run_id": task_run_id, "state": state.value, "message": text, "attempt": attempt}
        # Shielded: a stop raised in the middle must not leave a final state neither queued nor open to end_open.
        with self._shield():
            with self._lock:
                if state in _FINAL:
                    self._open.pop(task_run_id, None)
                elif task_run_id in self._open:
                    self._open[task_run_id] = attempt
            self._batches.add({**item, "at": self._clock().isoformat()})

    def flush(self) -> None:
        """Wait until every state reported so far has been sent (before the flow run's own final state), for at most
        :data:`FLUSH_SECONDS`: an API down for good must not keep the run from ending."""
        with self._shield():
            if not self._batches.flush(timeout=FLUSH_SECONDS):
                logger.warning(
                    "Some task-run states were not recorded within %ss: the API did not take them", FLUSH_SECONDS
                )

    def end_open(self, state: TaskRunState, message: str) -> None:
        """Give ``state`` to the task runs recorded here that have no final state (the flow run has stopped), and
        send every state still queued."""
        with self._lock:
            left = dict(self._open)
        for task_run_id, attempt in left.items():
            self.task_run_state(task_run_id, state, message, attempt)
            self._ended.add(task_run_id)
        self.flush()
