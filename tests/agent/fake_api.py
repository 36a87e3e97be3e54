"""An in-memory stand-in for the API's agent routes, for fast tests of the agent's loops.

It keeps the server's rules where the agent depends on them: the state machine (illegal transitions are 409),
the label rule, atomic claims with a long poll, heartbeats that fail dead deployments and ask to cancel runs in
Cancelling. Failures can be injected per method, before the call (nothing happened) or after it (it happened, but
the answer was lost, like a read timeout); a method can be held until a test lets it go on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from baton.exceptions import ConflictError, IllegalTransitionError, NotFoundError
from baton.labels import agent_can_take
from baton.schemas import responses as r
from baton.schemas.core import Role, RunConfig, Storage
from baton.schemas.states import CLAIMABLE_STATES, FINAL_STATES, check_transition

from .faults import Faults


@dataclass
class FakeRun:
    id: str
    name: str
    labels: list[str]
    run_config: RunConfig
    state: str = "Scheduled"
    agent_id: str | None = None
    deployment: dict[str, Any] | None = None
    claims: int = 0  # each claim mints a new run token
    history: list[tuple[str, str | None, dict[str, Any] | None]] = field(default_factory=list)


class FakeApi(Faults):
    def __init__(self, tenant_id: str = "tenant-1", role: Role | None = Role.RUNNER) -> None:
        self.tenant_id = tenant_id
        self.role = role
        self.runs: dict[str, FakeRun] = {}
        self.claims: list[dict[str, Any]] = []
        self.heartbeats: list[list[dict[str, Any]]] = []
        self.heartbeat_claims: list[list[str] | None] = []
        self.agents: dict[str, dict[str, Any]] = {}
        self.closed = False
        self.claims_waiting = 0  # claim calls under way
        self._cond = threading.Condition()
        self._init_faults(self._cond)
        self._ids = itertools.count(1)
        self._now = datetime.now(UTC)

    # --- test controls ----------------------------------------------------------------------------

    def add_run(self, labels: list[str] | None = None, env: dict[str, str] | None = None, **run_config: Any) -> str:
        with self._cond:
            number = next(self._ids)
            run = FakeRun(
                id=f"run-{number}",
                name=f"fake-run-{number}",
                labels=sorted(labels or []),
                run_config=RunConfig(env=env or {}, **run_config),
            )
            run.history.append(("Scheduled", None, None))
            self.runs[run.id] = run
            self._cond.notify_all()
            return run.id

    def expire_lease(self, run_id: str) -> None:
        """Like the lease service: a Pending run whose lease expired goes back to Scheduled."""
        with self._cond:
            run = self.runs[run_id]
            self._transition(run, "Scheduled", "lease expired: returned to Scheduled (1 of 3)", None)
            run.agent_id = None

    def state(self, run_id: str) -> str:
        with self._cond:
            return self.runs[run_id].state

    def last_state(self, run_id: str) -> tuple[str, str | None, dict[str, Any] | None]:
        with self._cond:
            return self.runs[run_id].history[-1]

    def cancel(self, run_id: str) -> None:
        """Like POST /cancel: undeployed runs are Cancelled at once, deployed ones go to Cancelling."""
        with self._cond:
            run = self.runs[run_id]
            target = "Cancelling" if run.state in ("Submitted", "Running") else "Cancelled"
            self._transition(run, target, "cancel asked by a test", None)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not met")
                self._cond.wait(min(remaining, 0.05))

    def wait_for_state(self, run_id: str, state: str, timeout: float = 10.0) -> None:
        try:
            self.wait_for(lambda: self.runs[run_id].state == state, timeout)
        except TimeoutError:
            raise TimeoutError(f"run {run_id} is {self.runs[run_id].state}, not {state}") from None

    # --- the client methods the agent calls --------------------------------------------------------

    def whoami(self) -> r.WhoAmI:
        self._enter("whoami", None)
        return r.WhoAmI(tenant_id=self.tenant_id, tenant_name="default", role=self.role, key_id="k1")

    def register_agent(
        self,
        name: str,
        agent_type: str,
        labels: list[str],
        agent_config_id: str | None = None,
        version: str | None = None,
    ) -> r.AgentRead:
        self._enter("register_agent", (name, agent_type, labels, agent_config_id))
        agent_id = f"agent-{name}"
        with self._cond:
            self.agents[agent_id] = {"name": name, "type": agent_type, "labels": labels}
        return r.AgentRead(
            id=agent_id,
            name=name,
            type=agent_type,
            labels=labels,
            agent_config_id=agent_config_id,
            created=self._now,
            last_seen=None,
        )

    def claim(
        self,
        agent_id: str,
        limit: int = 1,
        wait_seconds: float = 0.0,
        prefetch_seconds: float = 0.0,
        instance: str | None = None,
    ) -> r.ClaimResponse:
        self._enter("claim", (agent_id, limit, wait_seconds))
        deadline = time.monotonic() + wait_seconds
        agent_labels = self.agents[agent_id]["labels"]
        with self._cond:
            self.claims.append({"limit": limit, "wait_seconds": wait_seconds})
            self.claims_waiting += 1
            try:
                while True:
                    taken = [
                        run
                        for run in self.runs.values()
                        if run.state in CLAIMABLE_STATES and agent_can_take(run.labels, agent_labels)
                    ][:limit]
                    remaining = deadline - time.monotonic()
                    if taken or remaining <= 0:
                        break
                    self._cond.wait(remaining)
                for run in taken:
                    self._transition(run, "Pending", f"claimed by {agent_id}", None)
                    run.agent_id = agent_id
                    run.claims += 1
                response = r.ClaimResponse(runs=[self.claimed_run(run) for run in taken])
            finally:
                self.claims_waiting -= 1
                self._cond.notify_all()
        self._leave("claim")
        return response

    def agent_heartbeat(
        self,
        agent_id: str,
        deployments: list[dict[str, Any]],
        claims: list[str] | None = None,
        instance: str | None = None,
    ) -> r.HeartbeatResponse:
        self._enter("agent_heartbeat", deployments)
        self.heartbeat_claims.append(claims)
        failed = []
        with self._cond:
            self.heartbeats.append(deployments)
            for item in deployments:
                run = self.runs[item["flow_run_id"]]
                if not item["alive"] and run.state not in FINAL_STATES:
                    message = f"process exited with code {item['exit_code']} before reporting a final state"
                    self._transition(run, "Failed", message, None)
                    failed.append(run.id)
            cancel = [run.id for run in self.runs.values() if run.agent_id == agent_id and run.state == "Cancelling"]
            self._cond.notify_all()
        return r.HeartbeatResponse(cancel=cancel, failed=failed)

    def set_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> r.FlowRunRead:
        self._enter("set_flow_run_state", (flow_run_id, name, message, data))
        with self._cond:
            run = self.runs.get(flow_run_id)
            if run is None:
                raise NotFoundError(404, f"no flow run {flow_run_id}")
            try:
                self._transition(run, name, message, data)
            except IllegalTransitionError as exc:
                raise ConflictError(409, str(exc)) from exc
            if name == "Scheduled":
                run.agent_id = None
            if name == "Submitted":
                run.deployment = data or {}
            read = self._read(run)
        self._leave("set_flow_run_state")
        return read

    def change_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> r.StateChanged:
        """The agent's state changes (``Prefer: return=minimal``): scripted and recorded as ``set_flow_run_state``."""
        read = self.set_flow_run_state(flow_run_id, name, message, data)
        return r.StateChanged(id=read.id, state=read.state, state_message=read.state_message)

    def get_flow_run(self, flow_run_id: str) -> r.FlowRunRead:
        self._enter("get_flow_run", flow_run_id)
        with self._cond:
            run = self.runs.get(flow_run_id)
            if run is None:
                raise NotFoundError(404, f"no flow run {flow_run_id}")
            return self._read(run)

    def list_flow_runs(
        self, state: str | None = None, flow_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[r.FlowRunRead]:
        self._enter("list_flow_runs", (state, limit, offset))
        with self._cond:
            runs = [run for run in self.runs.values() if state is None or run.state == state]
            return [self._read(run) for run in runs[offset : offset + limit]]

    def deregister_agent(self, agent_id: str, instance: str | None = None) -> r.AgentRead:
        self._enter("deregister_agent", agent_id)
        with self._cond:
            agent = self.agents[agent_id]
            agent["deregistered"] = True
        return r.AgentRead(
            id=agent_id,
            name=agent["name"],
            type=agent["type"],
            labels=agent["labels"],
            agent_config_id=None,
            created=self._now,
            last_seen=None,
            live=False,
            stale=True,
            deregistered_at=self._now,
        )

    def write_logs(self, flow_run_id: str, logs: list[dict[str, Any]]) -> r.LogsWritten:
        self._enter("write_logs", (flow_run_id, logs))
        return r.LogsWritten(written=len(logs))

    def close(self) -> None:
        self.closed = True

    # --- helpers ---------------------------------------------------------------------------------

    def _transition(self, run: FakeRun, state: str, message: str | None, data: dict[str, Any] | None) -> None:
        check_transition(run.state, state)
        run.state = state
        run.history.append((state, message, data))
        self._cond.notify_all()

    def _read(self, run: FakeRun) -> r.FlowRunRead:
        return r.FlowRunRead(
            id=run.id,
            name=run.name,
            flow_id="flow-1",
            flow_name="fake-flow",
            flow_version=1,
            state=run.state,
            state_message=run.history[-1][1],
            labels=run.labels,
            parameters={},
            agent_id=run.agent_id,
            scheduled_start_time=self._now,
            created=self._now,
            start_time=None,
            end_time=None,
            deployment=run.deployment,
            run_config=run.run_config,
        )

    def get_flow(self, flow_id: str, include_source: bool = False) -> r.FlowRead:
        self._enter("get_flow", flow_id)
        if flow_id != "flow-1":
            raise NotFoundError(404, f"no flow {flow_id}")
        return self._flow()

    def claimed_run(self, run: FakeRun) -> r.ClaimedRun:
        token = f"run-token-{run.id}" if run.claims <= 1 else f"run-token-{run.id}-{run.claims}"
        return r.ClaimedRun(flow_run=self._read(run), flow=self._flow(), run_token=token)

    def _flow(self) -> r.FlowRead:
        return r.FlowRead(
            id="flow-1",
            name="fake-flow",
            version=1,
            entrypoint="main",
            storage=Storage(),
            run_config=RunConfig(),
            labels=[],
            parameters_schema={},
            tasks=[],
            schedule=None,
            description=None,
            source_filename=None,
            created=self._now,
        )
