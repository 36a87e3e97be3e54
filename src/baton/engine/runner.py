"""Run one flow run in this process and report it: states, task runs, logs, heartbeats.

Usage (what ``python -m baton.engine`` does)::

    with Client.from_settings(settings) as client:
        exit_code = FlowRunner(client, flow_run_id, settings).run()

The run never stays Running when the flow raises, whatever it raises: the outcome is Success, Failed with
``"<ExceptionType>: <message>"`` (the traceback goes to the logs) or Cancelled. The last log lines go with the final
state, in its request and its transaction (the lines before are flushed first): the API revokes the run token once
the run is final. The run starts with one request (``POST .../start``: Running, and the run with its flow), before
its flow is loaded.

A stop ends the run Cancelled when the run is being cancelled (``Cancelling`` seen by the heartbeat, or SIGTERM
while the API says ``Cancelling``); any other SIGTERM (an agent's cold stop, an operator) ends it Failed with
:data:`~baton.engine.cancel.TERMINATED`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from baton.client.http import Client
from baton.engine.cancel import TERMINATED, CancelSignal
from baton.engine.heartbeat import Heartbeat
from baton.engine.limits import MAX_LOGS_PER_BATCH, MAX_MESSAGE_LENGTH
from baton.engine.loader import load_flow
from baton.engine.logs import LogShipper, console_logging, note, ship_output
from baton.engine.reporter import ApiTaskRunReporter
from baton.engine.retry import call_with_retry, no_connection
from baton.engine.threads import call_with_timeout
from baton.engine.transitions import SUBMITTED_WAIT_SECONDS, StateSetter
from baton.exceptions import (
    AuthenticationError,
    BatonError,
    ClientError,
    ConflictError,
    FlowLoadError,
    NotFoundError,
    ServerUnavailableError,
)
from baton.schemas.responses import FlowRead, FlowRunRead
from baton.schemas.states import FINAL_STATES, StateName, TaskRunState
from baton.sdk.context import FlowRunCancelled
from baton.sdk.flows import Flow
from baton.sdk.tasks import describe_error
from baton.settings import BatonSettings

logger = logging.getLogger("baton.engine")

EXIT_SUCCESS = 0
EXIT_FAILED = 1
# How long the first call keeps trying an API that never answers at all (see ``_read_run``).
FIRST_CONTACT_SECONDS = 60.0
# A run started before its flow loaded asks again whether it was cancelled when the load took this long.
RECHECK_AFTER_LOAD_SECONDS = 0.5
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
        start_timeout: how long to wait for the agent's Submitted while the API answers that the run is still
            Pending. Longer than the server's claim lease (30 s by default) plus a margin: an agent that died
            before submitting lets the lease expire, which returns the run to Scheduled and ends the wait
            sooner; time the API is unavailable does not count (see :mod:`baton.engine.transitions`).
        state_retry_seconds: how long, in all, each read of the run and each state change is retried while the
            API is unavailable.
        stop_check_timeout: after a SIGTERM, how long to wait for the API to say whether the run is
            Cancelling (the agent's cold stop kills the process for good 3 s after SIGTERM).
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
        start_timeout: float = 60.0,
        state_retry_seconds: float = 120.0,
        stop_check_timeout: float = 1.0,
    ) -> None:
        self._client = client
        self._id = flow_run_id
        self._settings = settings
        self._send_logs = settings.logging.send_to_api if send_logs is None else send_logs
        self._expected_flow_id = flow_id
        self._tenant_id = tenant_id
        self._state_retry_seconds = state_retry_seconds
        self._stop_check_timeout = stop_check_timeout
        self._cancel = CancelSignal()
        self._states = StateSetter(
            client,
            flow_run_id,
            pending_seconds=start_timeout,
            unavailable_seconds=state_retry_seconds,
            should_stop=lambda: self._cancel.reason is not None,
        )

    def run(self) -> int:
        """Run the flow run to its end; return the exit code (0 Success or Cancelled, 1 otherwise)."""
        self._cancel.install()
        try:
            with console_logging(self._settings.logging.level):
                outcome, last_lines = self._run_with_logs()
                return self._finish(outcome, last_lines)
        finally:
            self._cancel.uninstall()

    def _run_with_logs(self) -> tuple[Outcome, list[dict[str, Any]]]:
        """How the run ended, and the last log lines, unsent: they go with the final state (one request less)."""
        if not self._send_logs:
            return self._execute(), []
        shipper = LogShipper(
            self._client,
            self._id,
            batch_interval=self._settings.logging.batch_interval_seconds,
            batch_size=self._settings.logging.batch_size,
            # The last lines wait for the API as long as the final state will: dropping them sooner gains nothing.
            flush_timeout=self._state_retry_seconds,
        )
        outcome: Outcome | None = None
        shipper.start()
        try:
            with ship_output(shipper):
                outcome = self._execute()
        finally:
            # Without a final state to set (or when leaving by an exception), every line is sent here.
            keep = MAX_LOGS_PER_BATCH if outcome is not None and outcome.state is not None else 0
            last_lines = shipper.close(keep=keep)
        summary = shipper.drop_summary()
        if summary is None or outcome.state is None:
            return outcome, last_lines
        # Never silently (issue 8, item 8): lines the API did not get are named in the final state message.
        message = f"{outcome.message}; {summary}" if outcome.message else summary
        return replace(outcome, message=message), last_lines

    def _execute(self) -> Outcome:
        read = self._read_run()
        if isinstance(read, Outcome):
            return read
        run, flow_read, started = read
        if not started and (run.state in _CANCEL_STATES or run.state in FINAL_STATES):
            return self._not_to_run(run.state)
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
        loading = time.monotonic()
        try:
            flow = self._load(run, flow_read)
        except (FlowLoadError, ServerUnavailableError, ClientError) as exc:
            logger.error("Cannot load the flow: %s", exc)
            return Outcome(StateName.FAILED, describe_error(exc), EXIT_FAILED)
        if self._cancel.reason is not None:  # stopped while the run was started or read, and loaded
            return self._stopped(self._cancel.reason)
        stopped = self._cancelled_while_loading(time.monotonic() - loading) if started else self._start()
        if stopped is not None:
            return stopped
        return self._run_flow(flow, run.parameters, run.run_config.executor)

    def _read_run(self) -> tuple[FlowRunRead, FlowRead | None, bool] | Outcome:
        """The run; its flow when the server gives both in one request (None: read it next); whether this call
        set it Running."""
        try:
            return call_with_retry(
                self._read_run_and_flow,
                what="read the flow run",
                timeout_seconds=self._state_retry_seconds,
                # This process's first call: an API it cannot connect to at all is most likely an address it
                # cannot reach (a container on a bridge network given 127.0.0.1): say so within a minute, not after
                # the two the other failures get (a server restart is seconds; its agent just reached it).
                unreachable_seconds=FIRST_CONTACT_SECONDS,
            )
        except AuthenticationError as exc:
            logger.error(
                "The API refused the run token (%s): the run has ended (its token is revoked then) or the "
                "token is wrong",
                exc,
            )
        except ServerUnavailableError as exc:
            where = self._client.api_url
            hint = ""
            if no_connection(exc):
                hint = (
                    "; nothing answers there from this process (in a container on a bridge network, 127.0.0.1 "
                    "is the container itself: run the agent with --network host, or serve the API on an address "
                    "the containers reach)"
                )
            logger.error("Cannot reach the API at %s to read flow run %s: %s%s", where, self._id, exc, hint)
        except ClientError as exc:
            logger.error("Cannot read flow run %s: %s", self._id, exc)
        return Outcome(None, None, EXIT_FAILED)

    def _read_run_and_flow(self) -> tuple[FlowRunRead, FlowRead | None, bool]:
        # Running and the run with its flow in one request: the usual start. The server waits for the agent's
        # Submitted as it would for a Running through /state.
        try:
            started = self._client.start_flow_run(self._id, wait_seconds=SUBMITTED_WAIT_SECONDS)
        except ConflictError:
            # Not startable now: still Pending after the wait, Cancelling, final, or Running already because an
            # earlier try's answer was lost. Read it and decide as before (``_start`` then sets Running, waiting).
            pass
        except NotFoundError:
            pass  # a server older than this route, or no such run (the reads below say which)
        else:
            return started.flow_run, started.flow, True
        try:
            both = self._client.get_flow_run_with_flow(self._id)
        except NotFoundError:
            # A server older than this engine has no such route (an unknown run is 404 again just below).
            return self._client.get_flow_run(self._id), None, False
        return both.flow_run, both.flow, False

    def _load(self, run: FlowRunRead, flow: FlowRead | None) -> Flow[..., Any]:
        if flow is None:
            flow = call_with_retry(
                lambda: self._client.get_flow(run.flow_id, include_source=True),
                what="read the flow",
                timeout_seconds=self._state_retry_seconds,
            )
        return load_flow(flow, fetch_bundle=self._fetch_bundle)

    def _fetch_bundle(self, digest: str) -> bytes:
        try:
            return call_with_retry(
                lambda: self._client.get_bundle(digest),
                what="read the flow's bundle",
                timeout_seconds=self._state_retry_seconds,
            )
        except ClientError as exc:  # e.g. 404: not this run's flow's bundle
            raise FlowLoadError(f"cannot download the flow's bundle {digest[:12]}: {exc}") from None

    def _start(self) -> Outcome | None:
        """Set the run Running; None when it is, else how to end instead."""
        try:
            refused_by = self._states.set(StateName.RUNNING)
        except (ServerUnavailableError, ClientError) as exc:
            logger.error("Cannot set the run Running: %s", exc)
            return Outcome(None, None, EXIT_FAILED)
        if refused_by is None or refused_by == StateName.RUNNING:
            # Running already: our first request went through but its answer was lost, and a retry got 409.
            return None
        if refused_by in _CANCEL_STATES:
            return self._cancelled_before_start(refused_by)
        if self._cancel.reason is not None:  # stopped while waiting for the agent's Submitted
            return self._stopped(self._cancel.reason)
        logger.error("Cannot start the flow run: it is %s", refused_by)
        return Outcome(None, None, EXIT_FAILED)

    def _cancelled_while_loading(self, seconds: float) -> Outcome | None:
        """After a load that took a while (a bundle downloaded, heavy imports), whether the run was cancelled
        meanwhile: it then ends before its flow is called, as a cancel before the start does. A quick load asks
        nothing (the heartbeat sees a cancel within its interval); an answer that does not come lets the flow run."""
        if seconds < RECHECK_AFTER_LOAD_SECONDS:
            return None
        try:
            state = self._client.flow_run_heartbeat(self._id).state
        except BatonError as exc:
            logger.warning("Cannot tell whether the run was cancelled while its flow loaded: %s", exc)
            return None
        return self._cancelled_before_start(state) if state in _CANCEL_STATES else None

    def _not_to_run(self, state: str) -> Outcome:
        if state in _CANCEL_STATES:
            return self._cancelled_before_start(state)
        logger.error("Flow run %s is already %s: nothing to run", self._id, state)
        return Outcome(None, None, EXIT_FAILED)

    def _cancelled_before_start(self, state: str) -> Outcome:
        logger.warning("Flow run %s is %s: not running it", self._id, state)
        if state == StateName.CANCELLING:
            return Outcome(StateName.CANCELLED, "cancelled before it started", EXIT_SUCCESS)
        return Outcome(None, None, EXIT_SUCCESS)

    def _run_flow(self, flow: Flow[..., Any], parameters: dict[str, Any], executor: str | None = None) -> Outcome:
        """Run the flow; ``executor``: the run's choice for its submitted tasks (its run config), over the flow's."""
        reporter = ApiTaskRunReporter(self._client, self._id, shield=self._cancel.deferred)
        interval = self._settings.agent.heartbeat_interval_seconds
        try:
            with Heartbeat(self._client, self._id, interval, self._cancel.request):
                try:
                    with self._cancel:
                        flow.run(parameters, reporter, executor)
                except FlowRunCancelled as exc:
                    # A stop between two calls of a task (after its Running, before its Cancelled) leaves it open.
                    reporter.end_open(TaskRunState.CANCELLED, "flow run cancelled")
                    return self._stopped(str(exc))
                # Outside the stop's reach: a SIGTERM while the last states go must not fail a flow that succeeded.
                reporter.flush()  # no task run is seen open once its run has ended
        except BaseException as exc:  # any way the flow ends but success: never leave the run Running
            logger.error("Flow run failed: %s", describe_error(exc), exc_info=exc)
            reporter.end_open(TaskRunState.FAILED, f"the flow run failed: {describe_error(exc)}")
            return Outcome(StateName.FAILED, describe_error(exc), EXIT_FAILED)
        logger.info("Flow run finished: Success")
        return Outcome(StateName.SUCCESS, None, EXIT_SUCCESS)

    def _stopped(self, reason: str) -> Outcome:
        """How to end a run whose flow was stopped (or never started) because of ``reason``."""
        if not self._cancel.terminated:  # asked by the heartbeat: the run is Cancelling (or ended elsewhere)
            logger.warning("Flow run cancelled: %s", reason)
            return Outcome(StateName.CANCELLED, reason, EXIT_SUCCESS)
        state = self._state_after_sigterm()
        if state in _CANCEL_STATES:
            logger.warning("Flow run cancelled: %s while the run is %s", TERMINATED, state)
            return Outcome(StateName.CANCELLED, f"the run is {state}: {TERMINATED}", EXIT_SUCCESS)
        logger.error("%s while the run is %s, not Cancelling: it ends Failed", TERMINATED, state or "unknown")
        return Outcome(StateName.FAILED, TERMINATED, EXIT_FAILED)

    def _set_final(self, state: StateName, message: str | None, lines: list[dict[str, Any]]) -> str | None:
        """The final state with the last lines (``StateSetter.set``). Refused for another reason than the token
        (422 from a server older than lines sent with a state, 413 from one whose body limit they pass, ...): the
        lines go first on their own, then the state alone, and ``lines`` is emptied (sent, or noted lost). The run
        must end whatever its lines do."""
        try:
            return self._states.set(state, message, logs=lines)
        except ClientError as exc:
            if not lines or isinstance(exc, AuthenticationError):
                raise
            logger.info("The final state with its last log lines was refused (%s): sending them apart", exc)
        self._send_lines_apart(lines)
        lines.clear()
        return self._states.set(state, message)

    def _send_lines_apart(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        try:
            call_with_retry(
                lambda: self._client.write_logs(self._id, lines),
                what="send the last log lines",
                timeout_seconds=self._state_retry_seconds,
            )
        except (ServerUnavailableError, ClientError) as exc:
            self._lost(lines, exc)

    @staticmethod
    def _lost(lines: list[dict[str, Any]], reason: BaseException | None = None) -> None:
        if lines:
            cause = f": {reason}" if reason else " with the final state"
            note(f"{len(lines)} last log lines could not be sent to the API{cause}")

    def _state_after_sigterm(self) -> str | None:
        """The run's state by one quick heartbeat; None when the API does not tell in time (then: Failed)."""
        try:
            return call_with_timeout(
                lambda: self._client.flow_run_heartbeat(self._id).state,
                self._stop_check_timeout,
                name="baton-stop-check",
            )
        except (TimeoutError, BatonError) as exc:
            logger.warning("Cannot tell whether the run is being cancelled: %s", exc)
            return None

    def _finish(self, outcome: Outcome, last_lines: list[dict[str, Any]]) -> int:
        if outcome.state is None:
            return outcome.exit_code
        message = outcome.message[:MAX_MESSAGE_LENGTH] if outcome.message else None
        try:
            refused_by = self._set_final(outcome.state, message, last_lines)
        except (ServerUnavailableError, ClientError) as exc:
            logger.error("Could not set the run %s: %s", outcome.state, exc)
            self._lost(last_lines)
            return EXIT_FAILED
        if refused_by == outcome.state:  # a retry after a lost answer: it was set the first time, with the lines
            return outcome.exit_code
        if refused_by is not None:
            logger.warning("Could not set the run %s: it is already %s", outcome.state, refused_by)
            self._send_lines_apart(last_lines)  # refused with the state, they were not stored
            if refused_by not in FINAL_STATES:
                return EXIT_FAILED
        return outcome.exit_code
