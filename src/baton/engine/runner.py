"""Run one flow run in this process and report it: states, task runs, logs, heartbeats.

Usage (what ``python -m baton.engine`` does)::

    with Client.from_settings(settings) as client:
        exit_code = FlowRunner(client, flow_run_id, settings).run()

The run never stays Running when the flow raises, whatever it raises: the outcome is Success, Failed with
``"<ExceptionType>: <message>"`` (the traceback goes to the logs) or Cancelled. Logs are flushed before the final
state is set, because the API revokes the run token once the run is final.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from baton.client.http import Client
from baton.engine.cancel import CancelSignal
from baton.engine.heartbeat import Heartbeat
from baton.engine.loader import load_flow
from baton.engine.logs import LogShipper, console_logging, ship_output
from baton.engine.reporter import ApiTaskRunReporter
from baton.engine.retry import call_with_retry
from baton.exceptions import AuthenticationError, ClientError, ConflictError, FlowLoadError, ServerUnavailableError
from baton.schemas.actions import MAX_MESSAGE_LENGTH
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import FINAL_STATES, StateName
from baton.sdk.context import FlowRunCancelled
from baton.sdk.flows import Flow
from baton.sdk.tasks import describe_error
from baton.settings import BatonSettings

logger = logging.getLogger("baton.engine")

EXIT_SUCCESS = 0
EXIT_FAILED = 1
_CANCEL_STATES = frozenset({StateName.CANCELLING, StateName.CANCELLED})


@dataclass(frozen=True)
class Outcome:
    """How the run ended: the final state to report (None: nothing to report) and the process's exit code."""

    state: StateName | None
    message: str | None
    exit_code: int


class FlowRunner:
    """Runs the flow run ``flow_run_id`` with ``client`` (authenticated with the run's token).

    Args:
        client: the API client.
        flow_run_id: the run.
        settings: logging (level, shipping, batching) and the heartbeat interval.
        send_logs: ship logs to the API; default ``settings.logging.send_to_api``.
        flow_id: the flow the agent said the run belongs to (``BATON_FLOW_ID``); the run's own is used.
        tenant_id: the tenant (``BATON_TENANT_ID``), for the logs.
        start_timeout: how long to wait for the agent's Submitted while the run is still Pending.
        state_retry_seconds: how long state calls are retried while the API is unreachable.
    """

    def __init__(
        self,
        client: Client,
        flow_run_id: str,
        settings: BatonSettings,
        *,
        send_logs: bool | None = None,
        flow_id: str | None = None,
        tenant_id: str | None = None,
        start_timeout: float = 15.0,
        state_retry_seconds: float = 120.0,
    ) -> None:
        self._client = client
        self._id = flow_run_id
        self._settings = settings
        self._send_logs = settings.logging.send_to_api if send_logs is None else send_logs
        self._expected_flow_id = flow_id
        self._tenant_id = tenant_id
        self._start_timeout = start_timeout
        self._state_retry_seconds = state_retry_seconds
        self._cancel = CancelSignal()

    def run(self) -> int:
        """Run the flow run to its end; return the exit code (0 Success or Cancelled, 1 otherwise)."""
        self._cancel.install()
        try:
            with console_logging(self._settings.logging.level):
                outcome = self._run_with_logs()
                return self._finish(outcome)
        finally:
            self._cancel.uninstall()

    def _run_with_logs(self) -> Outcome:
        if not self._send_logs:
            return self._execute()
        shipper = LogShipper(
            self._client,
            self._id,
            batch_interval=self._settings.logging.batch_interval_seconds,
            batch_size=self._settings.logging.batch_size,
        )
        with shipper, ship_output(shipper):
            return self._execute()

    def _execute(self) -> Outcome:
        run = self._read_run()
        if isinstance(run, Outcome):
            return run
        if run.state in _CANCEL_STATES:
            return self._cancelled_before_start(run.state)
        if run.state in FINAL_STATES:
            logger.error("Flow run %s is already %s: nothing to run", self._id, run.state)
            return Outcome(None, None, EXIT_FAILED)
        logger.info(
            "Flow run %r (%s) of flow %r version %d starting%s",
            run.name,
            run.id,
            run.flow_name,
            run.flow_version,
            f" in tenant {self._tenant_id}" if self._tenant_id else "",
        )
        if self._expected_flow_id and self._expected_flow_id != run.flow_id:
            logger.warning("BATON_FLOW_ID is %s but the run's flow is %s", self._expected_flow_id, run.flow_id)
        try:
            flow = self._load(run)
        except (FlowLoadError, ServerUnavailableError, ClientError) as exc:
            logger.error("Cannot load the flow: %s", exc)
            return Outcome(StateName.FAILED, describe_error(exc), EXIT_FAILED)
        stopped = self._start()
        if stopped is not None:
            return stopped
        return self._run_flow(flow, run.parameters)

    def _read_run(self) -> FlowRunRead | Outcome:
        try:
            return call_with_retry(
                lambda: self._client.get_flow_run(self._id),
                what="read the flow run",
                timeout_seconds=self._state_retry_seconds,
            )
        except AuthenticationError as exc:
            logger.error(
                "The API refused the run token (%s): the run has ended (its token is revoked then) or the "
                "token is wrong",
                exc,
            )
        except (ServerUnavailableError, ClientError) as exc:
            logger.error("Cannot read flow run %s: %s", self._id, exc)
        return Outcome(None, None, EXIT_FAILED)

    def _load(self, run: FlowRunRead) -> Flow[..., Any]:
        flow = call_with_retry(
            lambda: self._client.get_flow(run.flow_id, include_source=True),
            what="read the flow",
            timeout_seconds=self._state_retry_seconds,
        )
        return load_flow(flow)

    def _start(self) -> Outcome | None:
        """Set the run Running; None when it is, else how to end instead."""
        try:
            refused_by = self._transition(StateName.RUNNING)
        except (ServerUnavailableError, ClientError) as exc:
            logger.error("Cannot set the run Running: %s", exc)
            return Outcome(None, None, EXIT_FAILED)
        if refused_by is None or refused_by == StateName.RUNNING:
            # Running already: our first request went through but its answer was lost, and a retry got 409.
            return None
        if refused_by in _CANCEL_STATES:
            return self._cancelled_before_start(refused_by)
        logger.error("Cannot start the flow run: it is %s", refused_by)
        return Outcome(None, None, EXIT_FAILED)

    def _cancelled_before_start(self, state: str) -> Outcome:
        logger.warning("Flow run %s is %s: not running it", self._id, state)
        if state == StateName.CANCELLING:
            return Outcome(StateName.CANCELLED, "cancelled before it started", EXIT_SUCCESS)
        return Outcome(None, None, EXIT_SUCCESS)

    def _run_flow(self, flow: Flow[..., Any], parameters: dict[str, Any]) -> Outcome:
        reporter = ApiTaskRunReporter(self._client, self._id)
        interval = self._settings.agent.heartbeat_interval_seconds
        try:
            with Heartbeat(self._client, self._id, interval, self._cancel.request):
                try:
                    with self._cancel:
                        flow.run(parameters, reporter)
                except FlowRunCancelled as exc:
                    logger.warning("Flow run cancelled: %s", exc)
                    return Outcome(StateName.CANCELLED, str(exc) or None, EXIT_SUCCESS)
        except BaseException as exc:  # any way the flow ends but success: never leave the run Running
            logger.error("Flow run failed: %s", describe_error(exc), exc_info=exc)
            return Outcome(StateName.FAILED, describe_error(exc), EXIT_FAILED)
        logger.info("Flow run finished: Success")
        return Outcome(StateName.SUCCESS, None, EXIT_SUCCESS)

    def _finish(self, outcome: Outcome) -> int:
        if outcome.state is None:
            return outcome.exit_code
        message = outcome.message[:MAX_MESSAGE_LENGTH] if outcome.message else None
        try:
            refused_by = self._transition(outcome.state, message)
        except (ServerUnavailableError, ClientError) as exc:
            logger.error("Could not set the run %s: %s", outcome.state, exc)
            return EXIT_FAILED
        if refused_by == outcome.state:  # a retry after a lost answer: it was set the first time
            return outcome.exit_code
        if refused_by is not None:
            logger.warning("Could not set the run %s: it is already %s", outcome.state, refused_by)
            if refused_by not in FINAL_STATES:
                return EXIT_FAILED
        return outcome.exit_code

    def _transition(self, state: StateName, message: str | None = None) -> str | None:
        """Set the run's state; None when set, else the state that refused it (409).

        The agent posts Submitted just after starting this process, so a refusal while the run is still
        Pending is retried for ``start_timeout`` seconds.

        Raises:
            ServerUnavailableError: the API stayed unreachable.
            ClientError: the API refused for another reason than the state (e.g. the token is revoked).
        """
        deadline = time.monotonic() + self._start_timeout
        while True:
            try:
                call_with_retry(
                    lambda: self._client.set_flow_run_state(self._id, state, message),
                    what=f"set the run {state}",
                    timeout_seconds=self._state_retry_seconds,
                )
                return None
            except ConflictError:
                current = call_with_retry(
                    lambda: self._client.get_flow_run(self._id).state,
                    what="read the run's state",
                    timeout_seconds=self._state_retry_seconds,
                )
                if current != StateName.PENDING or time.monotonic() >= deadline:
                    return current
                time.sleep(0.5)
