"""Records task runs through the API for the SDK's tasks (``baton.sdk.context.TaskRunReporter``).

A reporting failure never fails the task: it is logged, and the task goes on unrecorded.
"""

from __future__ import annotations

import logging

from baton.client.http import Client
from baton.engine.retry import call_with_retry
from baton.exceptions import ClientError, ServerUnavailableError
from baton.schemas.states import TaskRunState

logger = logging.getLogger("baton.engine")


class ApiTaskRunReporter:
    """Creates task runs and sets their states with ``Client.create_task_run``/``set_task_run_state``."""

    def __init__(self, client: Client, flow_run_id: str, retry_seconds: float = 30.0) -> None:
        self._client = client
        self._flow_run_id = flow_run_id
        self._retry_seconds = retry_seconds

    def task_run_created(self, task_name: str) -> str | None:
        try:
            task_run = call_with_retry(
                lambda: self._client.create_task_run(self._flow_run_id, task_name, TaskRunState.PENDING),
                what=f"record task run {task_name!r}",
                timeout_seconds=self._retry_seconds,
            )
        except (ServerUnavailableError, ClientError) as exc:
            logger.warning("Task %r will run unrecorded: %s", task_name, exc)
            return None
        return task_run.id

    def task_run_state(
        self, task_run_id: str | None, state: TaskRunState, message: str | None = None, attempt: int = 1
    ) -> None:
        if task_run_id is None:
            return
        try:
            call_with_retry(
                lambda: self._client.set_task_run_state(task_run_id, state, message, attempt),
                what=f"set task run {task_run_id} {state}",
                timeout_seconds=self._retry_seconds,
            )
        except (ServerUnavailableError, ClientError) as exc:
            logger.warning("Could not record state %s of task run %s: %s", state, task_run_id, exc)
