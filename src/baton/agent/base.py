"""The agent: the protocol of DESIGN.md §5 around one platform :class:`~baton.agent.driver.Driver`.

The agent is composed, not inherited: it resolves its settings, registers, and wires its parts together, each of
which takes only what it uses:

- ``polling.py``: the poll loop and its claim calls (``Poller``);
- ``lifecycle.py``: one task per claimed run: deploy, then Submitted or Failed; cancels, stops (``RunLifecycle``);
- ``watching.py``: heartbeats and inspections of the deployments (``DeploymentWatch``);
- ``supervisor.py``: runs those loops and ends them: warm and cold stops, signals, fatal errors (``Supervisor``);
- ``shared.py``: the identity, timings, wake-up events and tasks they share.

``LocalAgent``, ``DockerAgent`` and ``InMemoryAgent`` are this class with their driver built from their options.

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev"]).start()   # blocks until --max-polls, a warm stop, or a fatal error
    Agent(driver, labels=["dev"]).start()  # any Driver
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from baton import __version__
from baton.agent.adoption import Adoption
from baton.agent.driver import Driver
from baton.agent.env import build_run_env
from baton.agent.executor_policy import ExecutorPolicy
from baton.agent.hardening import harden_agent_process
from baton.agent.health import AgentStatus, HealthServer, parse_address
from baton.agent.lifecycle import RunLifecycle
from baton.agent.loops import ErrorPolicy
from baton.agent.option_specs import COMMON_OPTIONS, OptionSpec, settings_overrides
from baton.agent.options import check_identity, configure_agent_logging, default_agent_name, resolve_settings
from baton.agent.platform_logs import PlatformLogs
from baton.agent.polling import Poller
from baton.agent.protocol import AgentApi, ApiCalls
from baton.agent.runs import RunRegistry
from baton.agent.shared import AgentIdentity, TaskSet, Timings, Wakeups
from baton.agent.supervisor import Supervisor
from baton.agent.watching import DeploymentWatch
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
    allow_executor: list[str] | None
    max_executor_processes: int | None
    key_file: str | None
    client: AgentApi | None


def agent_settings(
    specs: Sequence[OptionSpec] = (), values: Mapping[str, Any] | None = None, **options: Unpack[AgentOptions]
) -> BatonSettings:
    """The settings an agent runs with: the COMMON ``options`` (and a driver's own ``values`` of ``specs``) over
    ``options["settings"]``, else over the settings loaded from env and config file.

    Raises:
        ConfigurationError: an option or setting is invalid (``--agent-address`` included).
    """
    sections = settings_overrides([*COMMON_OPTIONS, *specs], {**options, **(values or {})})
    settings = resolve_settings(options.get("settings"), **sections)
    address = settings.agent.agent_address
    if address:
        try:
            parse_address(address)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--agent-address (BATON__AGENT__AGENT_ADDRESS): {exc}") from exc
    return settings


class RuntimeOptions(TypedDict, total=False):
    """The agent options that are not settings."""

    client: AgentApi | None


def runtime_options(options: AgentOptions) -> RuntimeOptions:
    """The options that are not settings (so not resolved twice): the API client."""
    return {"client": options.get("client")}


class Agent:
    """Claims flow runs from the API and deploys them with ``driver``.

    Every argument left as None falls back to the settings (``BATON__AGENT__*``, ``BATON__API__*``, config file),
    then to the defaults. An agent instance runs once.

    Args:
        driver: the platform's driver (``LocalDriver``, ``DockerDriver``, ...).
        settings: the settings to start from; None loads them (env, then ``$BATON_HOME/config.toml``).
        key: the API key (role runner or admin). api: the API URL. tenant_id: refuse a key of another tenant.
        agent_config_id: links this agent instance to an agent config. name: default ``<type>-agent-<host>``.
        labels: the agent's labels (the label rule of DESIGN.md §4). env: variables set on every flow run.
        max_polls: leave after this many claim calls (0: none). agent_address: serve the health check here.
        no_cloud_logs: flow runs do not send their logs to the API. log_level: of the ``baton.agent`` logger.
        limit: the most flow runs deployed at once; None: the driver's ``default_limit``; 0: no limit.
        run_timeout_seconds: kill a run still going after this long and fail it (a flow's shorter
            ``timeout_seconds`` wins). key_file: read the API key from this file (mode 0600), not from ``key``.
        allow_executor: the executors run configs may ask for (fnmatch patterns, ``local``; executor_policy.py).
        max_executor_processes: the most processes a run config's ``process:N``/``dask:N`` may start.
        client: replaces the HTTP client (tests, embedding).

    Raises:
        ConfigurationError: an option or setting is invalid (``--agent-address`` included).
        InvalidLabelError: a label is invalid.
    """

    # Seconds between SIGTERM-like and SIGKILL-like: for cancellations, and for a cold stop.
    kill_grace_seconds: float = 10.0
    cold_kill_grace_seconds: float = 3.0
    # On leaving: how long to wait for a claim call still in flight (it releases what it claims), and for deploys
    # under way (what they start must be killed or detached, not orphaned).
    stop_claim_wait_seconds: float = 1.0
    stop_deploy_wait_seconds: float = 30.0

    def __init__(self, driver: Driver, **options: Unpack[AgentOptions]) -> None:
        self.settings = agent_settings(**options)
        self.driver = driver
        agent_settings_ = self.settings.agent
        self.agent_type = driver.agent_type
        # How often deployments are inspected; a driver that learns of ends by itself calls deployments_changed().
        self.watch_interval_seconds = driver.watch_interval_seconds
        labels = normalize_labels([*agent_settings_.labels, *driver.labels()])
        self.identity = AgentIdentity(
            agent_settings_.name or default_agent_name(self.agent_type), self.agent_type, labels
        )
        self.send_logs_to_api = self.settings.logging.send_to_api
        # A platform's lines for its runs' logs (Kubernetes events), shipped by a task while the agent runs
        self.platform_logs = PlatformLogs(enabled=self.send_logs_to_api)
        self.log_level = self.settings.logging.level.upper()
        self.status = AgentStatus(name=self.name, deadline_seconds=agent_settings_.health_deadline_seconds)
        self.status.platform_check = driver.problem
        self.policy = ErrorPolicy(agent_settings_.max_consecutive_errors, Backoff())
        # No --limit: the platform's default (capacity.py); --limit 0: none at all.
        default = getattr(driver, "default_limit", None)  # optional for drivers written before it existed
        limit = default if agent_settings_.limit is None else agent_settings_.limit
        self.registry = RunRegistry(limit or None)
        self.executor_policy = ExecutorPolicy.parse(
            agent_settings_.allow_executor, agent_settings_.max_executor_processes
        )
        self.wakeups = Wakeups()
        self.tasks = TaskSet()
        self._client = options.get("client")
        self._owns_client = self._client is None
        self._api: ApiCalls | None = None
        self._poller: Poller | None = None
        self._supervisor: Supervisor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.health_server: HealthServer | None = None
        # Measures how long deployments have run (timeouts); tests replace it.
        self.clock: Callable[[], float] = time.monotonic
        warning = driver.check_api_url(self.settings.api.url)
        if warning is not None:
            logger.warning("%s", warning)

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def labels(self) -> list[str]:
        return self.identity.labels

    @property
    def agent_id(self) -> str | None:
        return self.identity.agent_id

    @property
    def tenant_id(self) -> str | None:
        return self.identity.tenant_id

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
        address = self.settings.agent.agent_address
        if address:  # before start-up: a probe gets an honest 503 "starting" rather than no answer
            server = HealthServer(address, self.status, poke=self.poke)
            server.start()
            self.health_server = server
        try:
            await self.driver.open(self)
            await self._startup()
            if self.settings.agent.max_polls == 0:
                logger.info("--max-polls 0: registered, making no claim calls")
                return
            adoption, supervisor = self._compose()
            await adoption.adopt_all()  # before the first claim: adopted runs hold their slots
            self.tasks.spawn(self.platform_logs.ship(self.api), "platform logs")
            await supervisor.supervise()
        finally:
            if self.health_server is not None:
                self.health_server.stop()
            try:
                await self.driver.close()
            finally:
                self._close_client()

    def _compose(self) -> tuple[Adoption, Supervisor]:
        """Wire the agent's parts together, each with only what it uses."""
        settings = self.settings.agent
        timings = Timings(
            kill_grace_seconds=self.kill_grace_seconds,
            cold_kill_grace_seconds=self.cold_kill_grace_seconds,
            stop_claim_wait_seconds=self.stop_claim_wait_seconds,
            stop_deploy_wait_seconds=self.stop_deploy_wait_seconds,
            watch_interval_seconds=self.watch_interval_seconds,
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
        )
        api, driver, registry, identity = self.api, self.driver, self.registry, self.identity
        wakeups, tasks = self.wakeups, self.tasks
        lifecycle = RunLifecycle(
            driver,
            api,
            registry,
            self.status,
            tasks,
            wakeups,
            identity,
            timings,
            self.run_env,
            refusal=self.refusal,
            run_timeout_seconds=settings.run_timeout_seconds,
            clock=self.clock,
        )
        self._poller = Poller(
            api,
            registry,
            self.status,
            wakeups,
            identity,
            accept=lifecycle.accept,
            problem=driver.problem,
            max_polls=settings.max_polls,
            poll_wait_seconds=settings.poll_wait_seconds,
        )
        watch = DeploymentWatch(driver, api, registry, lifecycle, identity, wakeups, tasks, clock=self.clock)
        self._supervisor = Supervisor(
            driver=driver,
            api=api,
            registry=registry,
            status=self.status,
            poller=self._poller,
            lifecycle=lifecycle,
            watch=watch,
            identity=identity,
            wakeups=wakeups,
            tasks=tasks,
            timings=timings,
        )
        adoption = Adoption(
            driver,
            api,
            registry,
            identity,
            kill_grace_seconds=timings.kill_grace_seconds,
            on_change=lifecycle.update_active,
            spawn=tasks.spawn,
            run_timeout_seconds=settings.run_timeout_seconds,
            clock=self.clock,
        )
        return adoption, self._supervisor

    def _close_client(self) -> None:
        client = self._client
        if not self._owns_client or client is None:
            return
        # A claim call still in flight releases what it claims with the client: it closes it when done.
        if self._poller is None or not self._poller.close_after(client.close):
            client.close()

    def stop(self, cold: bool = False) -> None:
        """Ask for a warm stop (a second call, or ``cold=True``: a cold stop). Thread-safe, like a signal."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._request_stop(cold, escalate=False)  # before start: start() will not claim
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to stop
            loop.call_soon_threadsafe(self._request_stop, cold, True)

    def _request_stop(self, cold: bool, escalate: bool) -> None:
        if self._supervisor is not None:
            self._supervisor.request(cold)
            return
        # Supervision has not started: it finds the stop already asked for. While running (starting up), a second
        # stop is a cold one, as a second signal is.
        wakeups = self.wakeups
        wakeups.level = 2 if cold else min(2, wakeups.level + 1) if escalate else max(wakeups.level, 1)
        self.status.stopping = True

    def poke(self) -> None:
        """Cut the poll loop's current wait short (``GET /api/poke``). Thread-safe."""
        self._call_soon(self.wakeups.poke)

    def deployments_changed(self) -> None:
        """Tell the watch loop to inspect deployments now, not at its next tick. Thread-safe."""
        self._call_soon(self.wakeups.wake_watch)

    @property
    def sends_run_logs(self) -> bool:
        return self.platform_logs.enabled

    def run_logs(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        """Lines from the platform for run ``run_id``'s logs (``LogEntry`` fields). Thread-safe."""
        self.platform_logs.add(run_id, entries)

    def platform_back(self) -> None:
        """The driver's platform is usable again: claim now. Thread-safe."""
        self.poke()

    @property
    def api(self) -> ApiCalls:
        """The agent's API calls, under its error policy."""
        if self._api is None:
            # The API back after an outage: the poll loop claims at once rather than after its backoff.
            self._api = ApiCalls(self.client, self.policy, self.status, on_answered_again=self.wakeups.poke)
        return self._api

    @property
    def client(self) -> AgentApi:
        """The API client (built from the settings on first use). Thread-safe."""
        if self._client is None:
            from baton.client.http import Client

            self._client = Client.from_settings(self.settings)
        return self._client

    # --- start-up ------------------------------------------------------------------------------

    async def _startup(self) -> None:
        client = self.client
        who = await self.api.call("whoami", client.whoami, duty="startup")
        check_identity(who, self.settings.api.tenant_id)
        self.identity.tenant_id = who.tenant_id
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
        self.identity.agent_id = agent.id
        logger.info(
            "agent %s (%s) registered as %s in tenant %s with labels %s; %s",
            self.name,
            self.agent_type,
            agent.id,
            who.tenant_name,
            self.labels or "(none: takes only unlabelled runs)",
            self._limit_text(),
        )

    def _limit_text(self) -> str:
        limit = self.registry.limit
        if limit is None:
            return "no limit on runs at once"
        given = self.settings.agent.limit is not None
        return f"at most {limit} runs at once" + ("" if given else " (this machine's default; --limit to change)")

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

    def refusal(self, claimed: ClaimedRun) -> str | None:
        """Why ``claimed`` must not be deployed here (its run config asks what the operator refuses), or None."""
        refused = self.executor_policy.refusal(claimed.flow_run.run_config.executor)
        return None if refused is None else f"agent {self.name} refused to deploy the run: {refused}"

    # --- helpers ----------------------------------------------------------------------------------

    def _call_soon(self, callback: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(callback)
