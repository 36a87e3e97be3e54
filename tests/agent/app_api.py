"""The real API server in process, for tests of the agent's loops: its claims, leases, heartbeats and state machine,
not a copy of them.

:class:`InProcessServer` serves the app of ``baton.server.app.create_app`` with uvicorn, in a thread of the test
process, on 127.0.0.1 (a free port) and a SQLite file migrated once per session. Not an in-memory ASGI transport:
the agent's claims are long polls made from blocking threads while its other calls go on from other threads, and a
claim call the agent gave up on must stay open on the server (it is answered later, and released); real HTTP on
loopback serves all of that as production does, with uvicorn's own disconnects and timeouts.

:class:`AppApi` is a real :class:`baton.client.Client` of one fresh tenant of that server, with a runner key, which
an agent takes as its ``client=``. Every call of the agent's API (:class:`baton.agent.protocol.AgentApi`) is
recorded, can be made to fail before it is sent (nothing happened) or after it was answered (it happened, but the
answer was lost, like a read timeout), or held until a test lets it go. Nothing else is changed: the request goes
to the server as it is. The test controls (``add_run``, ``state``, ``cancel``...) use an admin client of the same
tenant and are never recorded.

A tenant per test is what isolates tests on one server: claims only ever see their own tenant's runs (see
tests/server/harness.py), and one server per session costs its start-up (~0.3 s) once, not per test.

Usage::

    api = AppApi(server)                     # a new tenant: admin and runner keys
    run_id = api.add_run(labels=["dev"])     # a Scheduled run of a registered flow
    agent = InMemoryAgent(settings=settings, client=api)
    ...
    api.wait_for_state(run_id, "Submitted")
    api.close_all()
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from sqlalchemy import update

from baton.client import Client
from baton.schemas import responses as r
from baton.schemas.core import Role, RunConfig
from baton.server.app import create_app
from baton.server.database.connection import create_database_engine, transaction
from baton.server.database.migrate import upgrade
from baton.server.database.orm import FlowRun, utcnow
from baton.server.models import tenants
from baton.server.models.claims import expire_leases
from baton.settings import BatonSettings, load_settings
from support import register_source_flow

from .faults import Faults

T = TypeVar("T")
State = tuple[str, str | None, dict[str, Any] | None]

FLOW_NAME = "fake-flow"


def _settings(home: Path, database_url: str) -> BatonSettings:
    """The server's settings: the defaults, untouched by the developer's BATON_ environment or config file."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("BATON"):
                patch.delenv(name)
        patch.setenv("BATON_HOME", str(home))
        # Tests send no bad keys on purpose, but share one address and server for the session.
        return load_settings(server={"database_url": database_url, "failed_auth_limit": 100_000})


class InProcessServer:
    """The real app, served by uvicorn in a daemon thread on 127.0.0.1 and a port of its own.

    Args:
        home: a directory for its SQLite file.
    """

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.settings = _settings(home, f"sqlite:///{home / 'baton.db'}")
        engine = create_database_engine(self.settings.database_url(), self.settings.server.database_pool_size)
        upgrade(engine)  # once: the app's own start-up finds the schema at head
        self.app = create_app(self.settings, engine)
        self.session_factory = self.app.state.session_factory
        # Bound here, before uvicorn starts: the port is known (and taken) without a race with other processes.
        # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
        # it every answer (headers and body written apart) waits out the client's delayed ACK, some 40 ms.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="baton-api-in-process", daemon=True
        )

    def start(self, timeout: float = 30.0) -> InProcessServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process API server did not start (see the log above)")
            time.sleep(0.005)
        return self

    def notify(self, tenant_id: str) -> None:
        """Wake the tenant's waiting claims, as the server does after a run becomes claimable."""
        self.app.state.notifier.notify_threadsafe(tenant_id)

    def stop(self) -> None:
        # Long polls still open (agents that left them to a daemon thread) answer "no runs" at once, as on a
        # stop of the real server (baton.server.main.DrainingServer).
        self.app.state.notifier.close_threadsafe()
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()


@dataclass(frozen=True)
class Tenant:
    """A tenant of the server, with an admin key (the test controls) and a runner key (the agent)."""

    id: str
    admin_key: str
    runner_key: str

    @classmethod
    def create(cls, server: InProcessServer) -> Tenant:
        """Straight in the database, with no round trip (as tests/server/harness.py does)."""
        name = f"tenant-{uuid.uuid4().hex[:10]}"
        with transaction(server.session_factory) as session:
            tenant = tenants.create_tenant(session, name)
            _admin, admin_key = tenants.create_api_key(session, tenant.id, Role.ADMIN, f"{name} admin")
            _runner, runner_key = tenants.create_api_key(session, tenant.id, Role.RUNNER, f"{name} agents")
            return cls(tenant.id, admin_key, runner_key)


class AppApi(Faults, Client):
    """A real client of a new tenant of ``server`` with its runner key (what an agent is given), with the test
    controls of ``tests/agent/fake_api.py``'s ``FakeApi`` on the real server.

    Args:
        server: the in-process server.
        tenant: the tenant (default: a new one). key: this client's key (default: the tenant's runner key).
        admin: the tenant's admin client, when another :class:`AppApi` has it (:meth:`with_key`).
    """

    def __init__(
        self,
        server: InProcessServer,
        tenant: Tenant | None = None,
        key: str | None = None,
        admin: Client | None = None,
    ) -> None:
        self.server = server
        self.tenant = tenant or Tenant.create(server)
        self.tenant_id = self.tenant.id
        self.runner_key = self.tenant.runner_key
        self._owns_admin = admin is None
        self.admin = admin or Client(server.url, self.tenant.admin_key)  # the test controls' client
        super().__init__(server.url, key or self.runner_key)
        self.claims: list[dict[str, Any]] = []  # the claim calls sent to the server
        self.heartbeats: list[list[dict[str, Any]]] = []  # the deployments of each heartbeat sent
        self.heartbeat_claims: list[list[str] | None] = []  # the claims each heartbeat named
        self.claims_waiting = 0  # claim calls sent and not answered yet
        self.closed = False
        self._lock = threading.Lock()
        self._init_faults(self._lock)  # every call of the agent's API, in order, in self.calls
        # Notified whenever a call of the agent's API ends: only those (and the test's own controls) change runs,
        # so wait_for looks again then, rather than asking the server every few milliseconds meanwhile.
        self._ended = threading.Condition()
        self._calls_ended = 0
        self._flows: dict[str, str] = {}  # a flow's registration, as JSON -> its id
        self._others: list[AppApi] = []

    # --- test controls (through the admin client: never recorded) -------------------------------------------

    def with_key(self, key: str) -> AppApi:
        """A recording client of this tenant with another key (closed with this one)."""
        other = AppApi(self.server, self.tenant, key, self.admin)
        self._others.append(other)
        return other

    def new_key(self, role: str) -> str:
        return self.admin.create_api_key(role, name=f"{role}-{uuid.uuid4().hex[:6]}").key

    def fake_flow(self, **fields: Any) -> str:
        """The id of flow ``fake-flow`` registered with ``fields`` (registered once per distinct ``fields``)."""
        wanted = json.dumps(fields, sort_keys=True)
        if wanted not in self._flows:
            self._flows[wanted] = register_source_flow(self.admin, name=FLOW_NAME, **fields)
        return self._flows[wanted]

    def add_run(
        self,
        labels: list[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        flow: Mapping[str, Any] | None = None,
        **run_config: Any,
    ) -> str:
        """A new Scheduled run with ``labels``, of a flow whose run config has ``env`` and ``run_config``, and the
        other registration fields ``flow`` (e.g. ``timeout_seconds``); its id."""
        config = RunConfig(env=env or {}, **run_config).model_dump(mode="json", exclude_defaults=True)
        flow_id = self.fake_flow(run_config=config, **(flow or {}))
        return self.admin.create_flow_run(flow_id=flow_id, labels=sorted(labels or [])).id

    def run(self, run_id: str) -> r.FlowRunRead:
        return self.admin.get_flow_run(run_id)

    def state(self, run_id: str) -> str:
        return self.run(run_id).state

    def history(self, run_id: str) -> list[State]:
        """The run's states, oldest first: (name, message, data)."""
        return [(state.name, state.message, state.data) for state in self.run(run_id).states]

    def last_state(self, run_id: str) -> State:
        return self.history(run_id)[-1]

    def agent(self, agent_id: str | None) -> r.AgentRead:
        """The agent as the server lists it."""
        [agent] = [agent for agent in self.admin.list_agents() if agent.id == agent_id]
        return agent

    def cancel(self, run_id: str) -> None:
        """POST /cancel: an undeployed run is Cancelled at once, a deployed one goes to Cancelling."""
        self.admin.cancel_flow_run(run_id)

    def expire_lease(self, run_id: str) -> None:
        """The run's claim lease runs out now, and the server's lease expiry returns it to the queue.

        What ``LeaseExpiryService.run_once`` does (``expire_leases``, then wake the tenant's claims), in the same
        transaction as moving the lease into the past: otherwise a heartbeat of the agent naming the claim could
        extend the lease in between. The service's own timer is not used: it waits out a lease (30 s) after the
        start, and then its interval.
        """
        with transaction(self.server.session_factory) as session:
            moved = session.execute(
                update(FlowRun)
                .where(FlowRun.id == run_id, FlowRun.state == "Pending")
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
                .execution_options(synchronize_session=False)
            )
            assert moved.rowcount == 1, f"run {run_id} is not Pending: no lease to expire"  # type: ignore[attr-defined]
            requeued = expire_leases(session, self.server.settings.server.max_lease_returns)
        assert run_id in [run.id for run in requeued], f"run {run_id} was not returned to the queue"
        self.server.notify(self.tenant_id)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (it may ask the server): tried again as each call of the agent's API
        ends, and every 50 ms for what changes without one (the agent's own state).

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._ended:
                seen = self._calls_ended
            if predicate():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met")
            with self._ended:
                if self._calls_ended == seen:
                    self._ended.wait(min(remaining, 0.05))

    def wait_for_state(self, run_id: str, state: str, timeout: float = 10.0) -> None:
        try:
            self.wait_for(lambda: self.state(run_id) == state, timeout)
        except TimeoutError:
            raise TimeoutError(f"run {run_id} is {self.history(run_id)}, not {state}") from None

    def close_all(self) -> None:
        """Close this client, the admin client and the clients of :meth:`with_key`."""
        for other in self._others:
            other.close_all()
        super().close()
        if self._owns_admin:
            self.admin.close()

    # --- the agent's API: recorded, with injected failures around the real call ---------------------------------

    def _through(self, method: str, args: Any, call: Callable[[], T]) -> T:
        try:
            self._enter(method, args)
            result = call()
            self._leave(method)
            return result
        finally:
            self._call_ended()

    def _call_ended(self) -> None:
        with self._ended:
            self._calls_ended += 1
            self._ended.notify_all()

    def whoami(self) -> r.WhoAmI:
        return self._through("whoami", None, super().whoami)

    def register_agent(
        self,
        name: str,
        agent_type: str,
        labels: list[str],
        agent_config_id: str | None = None,
        version: str | None = None,
    ) -> r.AgentRead:
        return self._through(
            "register_agent",
            (name, agent_type, labels, agent_config_id),
            lambda: super(AppApi, self).register_agent(name, agent_type, labels, agent_config_id, version),
        )

    def claim(
        self,
        agent_id: str,
        limit: int = 1,
        wait_seconds: float = 0.0,
        prefetch_seconds: float = 0.0,
        instance: str | None = None,
    ) -> r.ClaimResponse:
        def sent() -> r.ClaimResponse:
            with self._lock:
                self.claims.append({"limit": limit, "wait_seconds": wait_seconds})
                self.claims_waiting += 1
            self._call_ended()  # not ended, but a test may wait for it to be under way
            try:
                return super(AppApi, self).claim(agent_id, limit, wait_seconds, prefetch_seconds, instance)
            finally:
                with self._lock:
                    self.claims_waiting -= 1

        return self._through("claim", (agent_id, limit, wait_seconds), sent)

    def agent_heartbeat(
        self,
        agent_id: str,
        deployments: list[dict[str, Any]],
        claims: list[str] | None = None,
        instance: str | None = None,
    ) -> r.HeartbeatResponse:
        def sent() -> r.HeartbeatResponse:
            with self._lock:
                self.heartbeats.append(deployments)
                self.heartbeat_claims.append(claims)
            return super(AppApi, self).agent_heartbeat(agent_id, deployments, claims, instance)

        return self._through("agent_heartbeat", deployments, sent)

    def set_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> r.FlowRunRead:
        return self._through(
            "set_flow_run_state",
            (flow_run_id, name, message, data),
            lambda: super(AppApi, self).set_flow_run_state(flow_run_id, name, message, data),
        )

    def change_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> r.StateChanged:
        """How the agent sets states (the answer is the new state only): scripted like ``set_flow_run_state``."""
        args = (flow_run_id, name, message, data)
        return self._through("set_flow_run_state", args, lambda: super(AppApi, self).change_flow_run_state(*args))

    def get_flow_run(self, flow_run_id: str) -> r.FlowRunRead:
        return self._through("get_flow_run", flow_run_id, lambda: super(AppApi, self).get_flow_run(flow_run_id))

    def get_flow(self, flow_id: str, include_source: bool = False) -> r.FlowRead:
        return self._through("get_flow", flow_id, lambda: super(AppApi, self).get_flow(flow_id, include_source))

    def write_logs(self, flow_run_id: str, logs: list[dict[str, Any]]) -> r.LogsWritten:
        args = (flow_run_id, logs)
        return self._through("write_logs", args, lambda: super(AppApi, self).write_logs(flow_run_id, logs))

    def list_flow_runs(
        self,
        state: str | None = None,
        flow_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include: Sequence[str] = (),
        late: bool = False,
    ) -> list[r.FlowRunRead]:
        return self._through(
            "list_flow_runs",
            (state, limit, offset),
            lambda: super(AppApi, self).list_flow_runs(state, flow_name, limit, offset, include, late),
        )

    def deregister_agent(self, agent_id: str, instance: str | None = None) -> r.AgentRead:
        return self._through(
            "deregister_agent", agent_id, lambda: super(AppApi, self).deregister_agent(agent_id, instance)
        )

    def close(self) -> None:
        """What an agent that owns its client calls when it leaves (as ``FakeApi``, not among :attr:`calls`): the
        connections stay usable for the test's own checks until :meth:`close_all`."""
        self.closed = True
