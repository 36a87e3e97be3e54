"""The agent base class: the protocol of DESIGN.md §5, the concurrency limit, state changes and shutdown.

A driver (``local.py``, ``docker.py``, ``kubernetes.py``, ``testing.py``) implements only :meth:`Agent.deploy`,
:meth:`Agent.inspect` and :meth:`Agent.kill` (and, for a platform that can go away, :meth:`Agent.open_platform`,
:meth:`Agent.platform_problem` and :meth:`Agent.close_platform`). Everything else lives here: one task per claimed
run (deploy, then Submitted or Failed), heartbeats, cancellations and the state changes. The poll loop and its
claim calls are in ``polling.py``; the tasks, the warm and cold stops in ``stopping.py``.

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev"]).start()   # blocks until --max-polls, a warm stop, or a fatal error
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypedDict, Unpack

from baton import __version__
from baton.agent.env import build_run_env
from baton.agent.hardening import harden_agent_process
from baton.agent.health import AgentStatus, HealthServer, parse_address
from baton.agent.lifecycle import RunLifecycle
from baton.agent.loops import ErrorPolicy
from baton.agent.options import check_identity, configure_agent_logging, default_agent_name, resolve_settings
from baton.agent.polling import Poller
from baton.agent.protocol import AgentApi, ApiCalls
from baton.agent.runs import Deployment, Ended, Phase, RunRegistry
from baton.agent.stopping import StopControl
from baton.backoff import Backoff
from baton.exceptions import ConfigurationError
from baton.labels import normalize_labels
from baton.schemas.responses import ClaimedRun
from baton.settings import BatonSettings

logger = logging.getLogger("baton.agent")


class AgentOptions(TypedDict, total=False):
    """The options every agent takes (DESIGN.md §6 COMMON); each left out falls back to the settings."""

    settings: BatonSettings | None
    key: str | None
    api: str | None
    tenant_id: str | None
    agent_config_id: str | None
    name: str | None
    labels: list[str] | None
    env: dict[str, str] | None
    max_polls: int | None
    agent_address: str | None
    no_cloud_logs: bool
    log_level: str | None
    limit: int | None
    run_timeout_seconds: int | None
    key_file: str | None
    client: AgentApi | None


# AgentOptions that are fields of AgentSettings of the same name.
_AGENT_SETTING_OPTIONS = (
    "agent_config_id",
    "name",
    "labels",
    "env",
    "max_polls",
    "agent_address",
    "limit",
    "run_timeout_seconds",
)


class Agent(abc.ABC):
    """Claims flow runs from the API and deploys them; subclasses say how to deploy.

    Every argument left as None falls back to the settings (``BATON__AGENT__*``, ``BATON__API__*``, config file),
    then to the defaults. An agent instance runs once.

    Args:
        settings: the settings to start from; None loads them (env, then ``$BATON_HOME/config.toml``).
        key: the API key (role runner or admin). api: the API URL. tenant_id: refuse a key of another tenant.
        agent_config_id: links this agent instance to an agent config. name: default ``<type>-agent-<host>``.
        labels: the agent's labels (the label rule of DESIGN.md §4). env: variables set on every flow run.
        max_polls: leave after this many claim calls (0: none). agent_address: serve the health check here.
        no_cloud_logs: flow runs do not send their logs to the API. log_level: of the ``baton.agent`` logger.
        limit: the most flow runs deployed at once.
        run_timeout_seconds: kill a run still going after this long and fail it (a flow's shorter
            ``timeout_seconds`` wins). key_file: read the API key from this file (mode 0600), not from ``key``.
        client: replaces the HTTP client (tests, embedding).
        agent_overrides: further explicit ``AgentSettings`` fields, for drivers.

    Raises:
        ConfigurationError: an option or setting is invalid (``--agent-address`` included).
        InvalidLabelError: a label is invalid.
    """

    agent_type: ClassVar[str] = "agent"
    # How often deployments are inspected; a driver that learns of ends by itself calls deployments_changed().
    watch_interval_seconds: float = 0.5
    # Seconds between SIGTERM-like and SIGKILL-like: for cancellations, and for a cold stop.
    kill_grace_seconds: float = 10.0
    cold_kill_grace_seconds: float = 3.0
    # On leaving: how long to wait for a claim call still in flight (it releases what it claims), and for deploys
    # under way (what they start must be killed or detached, not orphaned).
    stop_claim_wait_seconds: float = 1.0
    stop_deploy_wait_seconds: float = 30.0

    def __init__(self, *, agent_overrides: dict[str, Any] | None = None, **options: Unpack[AgentOptions]) -> None:
        self.settings = resolve_settings(
            options.get("settings"),
            api={
                "url": options.get("api"),
                "key": options.get("key"),
                "key_file": options.get("key_file"),
                "tenant_id": options.get("tenant_id"),
            },
            agent={
                **{name: options.get(name) for name in _AGENT_SETTING_OPTIONS},
                **(agent_overrides or {}),
            },
        )
        agent_settings = self.settings.agent
        if agent_settings.agent_address:
            try:
                parse_address(agent_settings.agent_address)
            except ConfigurationError as exc:
                raise ConfigurationError(f"--agent-address (BATON__AGENT__AGENT_ADDRESS): {exc}") from exc
        self.labels = normalize_labels([*agent_settings.labels, *self.extra_labels()])
        self.name = agent_settings.name or default_agent_name(self.agent_type)
        self.send_logs_to_api = False if options.get("no_cloud_logs") else self.settings.logging.send_to_api
        self.log_level = (options.get("log_level") or self.settings.logging.level).upper()
        self.agent_id: str | None = None
        self.tenant_id: str | None = None
        self.status = AgentStatus(name=self.name, deadline_seconds=agent_settings.health_deadline_seconds)
        self.status.platform_check = self.platform_problem
        self.policy = ErrorPolicy(agent_settings.max_consecutive_errors, Backoff())
        self.registry = RunRegistry(agent_settings.limit)
        self._client = options.get("client")
        self._owns_client = self._client is None
        self._api: ApiCalls | None = None
        self.stop_control = StopControl(self)
        self.poller = Poller(self)
        self.runs = RunLifecycle(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.health_server: HealthServer | None = None
        # Measures how long deployments have run (timeouts); tests replace it.
        self.clock: Callable[[], float] = time.monotonic

    # --- what a driver implements ------------------------------------------------------------

    @abc.abstractmethod
    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        """Start the flow-run process for ``claimed`` with ``env`` (complete but for the platform's base env).

        Raises:
            DeploymentError: the run cannot be deployed; the message becomes its Failed message.
        """

    @abc.abstractmethod
    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        """None while the deployment runs (or while the platform cannot tell); its exit code once it has ended.

        An :class:`Ended` says more than the exit code: an unknown code (the deployment vanished), and a message
        for the run's Failed state (OOM-killed, the last log lines). Must not raise for platform errors.
        """

    @abc.abstractmethod
    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        """Stop the deployment: politely, then by force after ``grace_seconds``; harmless if it already ended."""

    def extra_labels(self) -> list[str]:
        """Labels the driver adds to the agent's (the local agent's hostname)."""
        return []

    def platform_problem(self) -> str | None:
        """Why the platform (Docker daemon, Kubernetes API) is unusable, or None.

        Called from the health thread and, before each claim and each deploy, from the event loop: it must answer
        at once (a driver checks its platform in the background and keeps the answer). While it is not None the
        agent is unhealthy, claims nothing, and releases the runs it has claimed but not deployed.
        """
        return None

    async def open_platform(self) -> None:
        """Connect to the platform before registering with the API; the agent does not start if it raises.

        Raises:
            ConfigurationError: the platform is unreachable or unusable (e.g. no Docker daemon).
        """
        return None

    async def close_platform(self) -> None:
        """Release what :meth:`open_platform` acquired; called once on leaving, even if it failed."""
        return None

    def detach(self, deployment: Deployment) -> None:
        """The agent exits while ``deployment`` still runs (``--max-polls``, fatal error): let it go on alone."""
        return None

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        """Stop a deployment of run ``run_id`` known only by what its Submitted state stored (``data``): one this
        agent's identity made before a restart. Only when the deployment is still there and provably that run's.

        Returns:
            What was stopped, for the Cancelled message; None when nothing of it is here to stop.
        """
        return None

    # --- public controls -----------------------------------------------------------------------

    def start(self) -> None:
        """Run the agent until ``--max-polls``, a warm stop or a cold stop; blocks.

        Raises:
            ConfigurationError: no API key, a tenant mismatch, a key not fit for an agent, bad settings.
            AuthenticationError: the API refused the key.
            ServerUnavailableError: the API failed ``max_consecutive_errors`` times in a row.
            ClientError: the API refused a request the agent should not have made (a bug).
        """
        configure_agent_logging(self.log_level)
        if threading.current_thread() is threading.main_thread():
            # The key is read: no child may inherit it, and no same-user process may read it from /proc. Only an
            # agent that owns its process does this; one run in a thread of a bigger program leaves it alone.
            harden_agent_process()
        asyncio.run(self.run())

    async def run(self) -> None:
        """:meth:`start` for callers that already have an event loop."""
        self._loop = asyncio.get_running_loop()
        self.stop_control.attach(self._loop)
        address = self.settings.agent.agent_address
        if address:  # before start-up: a probe gets an honest 503 "starting" rather than no answer
            server = HealthServer(address, self.status, poke=self.poke)
            server.start()
            self.health_server = server
        try:
            await self.open_platform()
            await self._startup()
            if self.settings.agent.max_polls == 0:
                logger.info("--max-polls 0: registered, making no claim calls")
                return
            await self.stop_control.supervise()
        finally:
            if self.health_server is not None:
                self.health_server.stop()
            try:
                await self.close_platform()
            finally:
                self._close_client()

    def _close_client(self) -> None:
        client = self._client
        # A claim call still in flight releases what it claims with the client: it closes it when done.
        if self._owns_client and client is not None and not self.poller.close_after(client.close):
            client.close()

    def stop(self, cold: bool = False) -> None:
        """Ask for a warm stop (a second call, or ``cold=True``: a cold stop). Thread-safe, like a signal."""
        self.stop_control.request_threadsafe(cold)

    def poke(self) -> None:
        """Cut the poll loop's current wait short (``GET /api/poke``). Thread-safe."""
        self._call_soon(self.stop_control.poke)

    def deployments_changed(self) -> None:
        """Tell the watch loop to inspect deployments now, not at its next tick. Thread-safe."""
        self._call_soon(self.stop_control.wake_watch)

    @property
    def api(self) -> ApiCalls:
        """The agent's API calls, under its error policy."""
        if self._api is None:
            # The API back after an outage: the poll loop claims at once rather than after its backoff.
            self._api = ApiCalls(self.client, self.policy, self.status, on_answered_again=self.stop_control.poke)
        return self._api

    @property
    def client(self) -> AgentApi:
        """The API client (built from the settings on first use). Thread-safe."""
        if self._client is None:
            from baton.client.http import Client

            self._client = Client.from_settings(self.settings)
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the agent is not running"
        return self._loop

    # --- start-up ------------------------------------------------------------------------------

    async def _startup(self) -> None:
        client = self.client
        who = await self.api.call("whoami", client.whoami, duty="startup")
        check_identity(who, self.settings.api.tenant_id)
        self.tenant_id = who.tenant_id
        agent = await self.api.call(
            "register",
            client.register_agent,
            self.name,
            self.agent_type,
            self.labels,
            self.settings.agent.agent_config_id,
            __version__,
            duty="startup",
        )
        self.agent_id = agent.id
        logger.info(
            "agent %s (%s) registered as %s in tenant %s with labels %s",
            self.name,
            self.agent_type,
            agent.id,
            who.tenant_name,
            self.labels or "(none: takes only unlabelled runs)",
        )

    def run_env(self, claimed: ClaimedRun) -> dict[str, str]:
        """The Baton part of ``claimed``'s environment (DESIGN.md §6); a driver adds its platform's base."""
        assert self.tenant_id is not None
        return build_run_env(
            claimed,
            api_url=self.settings.api.url,
            tenant_id=self.tenant_id,
            agent_env=self.settings.agent.env,
            agent_labels=self.labels,
            send_logs_to_api=self.send_logs_to_api,
        )

    # --- heartbeat and watch -------------------------------------------------------------------

    async def heartbeat_once(self) -> None:
        """Report deployments; stop the ones the server wants cancelled."""
        client, agent_id = self.client, self.agent_id
        assert agent_id is not None
        report = self.registry.heartbeat_report()
        # Only the claims named here keep their lease: one this agent does not know of expires (polling.py).
        claims = [run.id for run in self.registry.all() if not run.submitted]
        response = await asyncio.to_thread(client.agent_heartbeat, agent_id, report, claims)
        self.api.succeeded("heartbeat")
        for item in report:
            run = self.registry.get(item["flow_run_id"])
            if not item["alive"] and run is not None and run.phase is Phase.ENDED:
                self.runs.forget(run)
        for run_id in response.failed:
            logger.warning("run %s ended without a final state: the server marked it Failed", run_id)
        for run_id in response.cancel:
            self.stop_control.spawn(self.runs.cancel(run_id), f"cancel {run_id}")

    async def inspect_deployments(self) -> None:
        """Record the end of every deployment that has ended; kill those that have run past their limit."""
        for run in self.registry.in_phase(Phase.DEPLOYED):
            assert run.deployment is not None
            result = await self.inspect(run.deployment)
            if result is None or run.phase is not Phase.DEPLOYED:
                continue
            ended = result if isinstance(result, Ended) else Ended(result)
            run.phase, run.exit_code, run.end_message = Phase.ENDED, ended.exit_code, ended.message
            code = "unknown" if ended.exit_code is None else ended.exit_code
            logger.info("run %s (%s) ended with exit code %s", run.id, run.name, code)
            self.runs.run_left()
            self.stop_control.wake_heartbeat()
        self.runs.time_out(self.clock())

    # --- helpers ----------------------------------------------------------------------------------

    def _call_soon(self, callback: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(callback)
