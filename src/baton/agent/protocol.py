"""The slice of the API an agent uses, and how its calls apply the one error policy.

:class:`AgentApi` is what :class:`baton.client.http.Client` offers an agent; tests may pass anything shaped like
it. :class:`ApiCalls` runs the blocking client in a worker thread, retries transient errors under the agent's
:class:`~baton.agent.loops.ErrorPolicy`, and keeps the health status up to date.

Usage::

    api = ApiCalls(client, policy, status)
    who = await api.call("whoami", client.whoami)
    await api.set_state_if_allowed(run_id, "Scheduled", "released")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from baton.agent.health import AgentStatus
from baton.agent.loops import ErrorPolicy, retry_call
from baton.client.http import is_unreachable
from baton.exceptions import ClientError, ConflictError, ServerUnavailableError
from baton.schemas import responses as r
from baton.schemas.actions import MAX_MESSAGE_LENGTH

logger = logging.getLogger("baton.agent")
T = TypeVar("T")

_CUT_SHORT = " [... cut short]"


class AgentApi(Protocol):
    """The client methods an agent calls (all blocking; the agent calls them from worker threads)."""

    def whoami(self) -> r.WhoAmI: ...

    def register_agent(
        self,
        name: str,
        agent_type: str,
        labels: list[str],
        agent_config_id: str | None = None,
        version: str | None = None,
    ) -> r.AgentRead: ...

    def claim(
        self,
        agent_id: str,
        limit: int = 1,
        wait_seconds: float = 0.0,
        prefetch_seconds: float = 0.0,
        instance: str | None = None,
    ) -> r.ClaimResponse: ...

    def agent_heartbeat(
        self,
        agent_id: str,
        deployments: list[dict[str, Any]],
        claims: list[str] | None = None,
        instance: str | None = None,
    ) -> r.HeartbeatResponse: ...

    def change_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> r.StateChanged: ...

    def get_flow_run(self, flow_run_id: str) -> r.FlowRunRead: ...

    def get_flow(self, flow_id: str, include_source: bool = False) -> r.FlowRead: ...

    def write_logs(self, flow_run_id: str, logs: list[dict[str, Any]]) -> r.LogsWritten: ...

    def list_flow_runs(
        self, state: str | None = None, flow_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[r.FlowRunRead]: ...

    def deregister_agent(self, agent_id: str, instance: str | None = None) -> r.AgentRead: ...

    def close(self) -> None: ...


class ApiCalls:
    """Calls through ``client`` under ``policy``, recording successes and failures in ``status``.

    When the API answers again after it could not be reached, every backoff pause under way is cut short
    (:attr:`answered_again`, and ``on_answered_again`` for the agent's own loops): an agent resumes within a
    moment of a server's restart, not up to a full backoff (30 s) later. Only an unreachable API counts: a route
    that keeps answering 5xx is left to its backoff.

    Args:
        client: the API client.
        policy: the agent's shared error policy.
        status: the health facts to update.
        on_answered_again: called (on the event loop) when the API answers after being unreachable.
    """

    def __init__(
        self,
        client: AgentApi,
        policy: ErrorPolicy,
        status: AgentStatus,
        on_answered_again: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.status = status
        # A cold stop makes single attempts: it must end even when the API is gone.
        self.retry = True
        # Pulsed (set, then cleared at once: every pause waiting on it wakes) when the API answers again.
        self.answered_again = asyncio.Event()
        self._on_answered_again = on_answered_again
        self._unreachable = False  # the latest failure found no API, and no call has been answered since

    def succeeded(self, duty: str) -> None:
        """The API answered a call of ``duty``: its streak of failures is over."""
        self.policy.succeeded(duty)
        self.status.api_ok(duty)
        if self._unreachable:
            self._unreachable = False
            logger.info("the API answers again: retrying what waits for it now")
            self.answered_again.set()
            self.answered_again.clear()
            if self._on_answered_again is not None:
                self._on_answered_again()

    def _note_failure(self, exc: ServerUnavailableError, duty: str) -> None:
        self.status.api_failed(exc, duty)
        if is_unreachable(exc):
            self._unreachable = True

    def forget(self, duty: str) -> None:
        """Drop ``duty``'s streak and health entry: a run's duty ends with the run."""
        self.policy.succeeded(duty)
        self.status.forget_duty(duty)

    def failed(self, exc: ServerUnavailableError, duty: str) -> float:
        """Record a transient failure of ``duty``; return the backoff delay.

        Raises:
            ServerUnavailableError: too many failures in a row.
        """
        self._note_failure(exc, duty)
        return self.policy.failed(exc, duty)

    async def call(self, what: str, func: Callable[..., T], *args: Any, duty: str = "api") -> T:
        """``func(*args)`` in a worker thread, retrying transient errors (counted in ``duty``'s streak).

        Raises:
            ServerUnavailableError: the policy gave up (or a single attempt failed, when not retrying).
            ClientError: the API refused the request.
        """
        try:
            if not self.retry:
                result = await asyncio.to_thread(func, *args)
            else:
                result = await retry_call(
                    lambda: asyncio.to_thread(func, *args),
                    self.policy,
                    duty=duty,
                    what=what,
                    wake=self.answered_again,
                    on_failure=lambda exc: self._note_failure(exc, duty),
                )
        except ClientError:
            # A refusal is an answer: the transient failures before it are over (else health stays 503).
            self.succeeded(duty)
            raise
        self.succeeded(duty)
        return result

    async def get_flow_run(self, flow_run_id: str) -> r.FlowRunRead:
        """The run as the server has it now, retrying transient errors (counted in the run's duty).

        Raises:
            ServerUnavailableError: see :meth:`call`.
            ClientError: the API refused.
        """
        return await self.call(
            f"read run {flow_run_id}", self.client.get_flow_run, flow_run_id, duty=f"run {flow_run_id}"
        )

    async def get_flow(self, flow_id: str, run_id: str) -> r.FlowRead:
        """The flow (version) of run ``run_id``, retrying transient errors (counted in the run's duty).

        Raises:
            ServerUnavailableError: see :meth:`call`.
            ClientError: the API refused.
        """
        return await self.call(f"read flow {flow_id}", self.client.get_flow, flow_id, duty=f"run {run_id}")

    async def set_state(
        self, flow_run_id: str, state: str, message: str, data: dict[str, Any] | None = None
    ) -> r.StateChanged:
        """Set a run's state, retrying transient errors; returns the run's state as the server then has it (a
        Failed with retries left is Retrying), answered without the rest of the run (``Prefer: return=minimal``).

        Each run counts its own failures in a row: a burst of runs meeting a short outage together must not add
        up to one long streak. A retry may meet a 409 because the attempt before it went through although its
        answer was lost (a read timeout): callers that care ask the server (:meth:`get_flow_run`).

        Raises:
            ServerUnavailableError: see :meth:`call`.
            ClientError: the API refused, e.g. ConflictError (409) for a transition no longer allowed.
        """
        what = f"{state} for run {flow_run_id}"
        set_state = self.client.change_flow_run_state  # the new state is all the agent reads of the answer
        if len(message) > MAX_MESSAGE_LENGTH:
            # A platform's error (e.g. a daemon quoting a huge run config) must not make the state itself refused.
            message = message[: MAX_MESSAGE_LENGTH - len(_CUT_SHORT)] + _CUT_SHORT
        return await self.call(what, set_state, flow_run_id, state, message, data, duty=f"run {flow_run_id}")

    async def set_state_if_allowed(
        self, flow_run_id: str, state: str, message: str, data: dict[str, Any] | None = None
    ) -> str | None:
        """:meth:`set_state`; returns the state set, or None if the server refused the transition (409).

        Raises:
            ServerUnavailableError: see :meth:`call`.
            ClientError: any refusal other than 409.
        """
        try:
            run = await self.set_state(flow_run_id, state, message, data)
        except ConflictError as exc:
            logger.info("run %s: %s refused (%s)", flow_run_id, state, exc.detail)
            return None
        return run.state
