"""The agent base class: the protocol of DESIGN.md §5, the concurrency limit, state changes and shutdown.

A driver (``local.py``, ``docker.py``, ``kubernetes.py``, ``testing.py``) implements only :meth:`Agent.deploy`,
:meth:`Agent.inspect` and :meth:`Agent.kill`. Everything else lives here: one asyncio task per duty (poll,
heartbeat, watch), one task per claimed run (deploy, then Submitted or Failed), the warm and cold stops.

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev"]).start()   # blocks until --max-polls, a warm stop, or a fatal error
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from baton import __version__
from baton.agent.env import build_run_env
from baton.agent.health import AgentStatus, HealthServer
from baton.agent.loops import Backoff, ErrorPolicy, run_in_daemon_thread
from baton.agent.options import check_identity, configure_agent_logging, default_agent_name, resolve_settings
from baton.agent.protocol import AgentApi, ApiCalls
from baton.agent.runs import ActiveRun, Deployment, Phase, RunRegistry
from baton.agent.stopping import StopControl
from baton.exceptions import ClientError, ConfigurationError, ConflictError, ServerUnavailableError
from baton.labels import normalize_labels
from baton.schemas.responses import ClaimedRun
from baton.settings import BatonSettings

logger = logging.getLogger("baton.agent")


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
        client: replaces the HTTP client (tests, embedding).
        agent_overrides: further explicit ``AgentSettings`` fields, for drivers.

    Raises:
        ConfigurationError: an option or setting is invalid.
        InvalidLabelError: a label is invalid.
    """

    agent_type: ClassVar[str] = "agent"
    # How often deployments are inspected; a driver that learns of ends by itself calls deployments_changed().
    watch_interval_seconds: float = 0.5
    # Seconds between SIGTERM-like and SIGKILL-like: for cancellations, and for a cold stop.
    kill_grace_seconds: float = 10.0
    cold_kill_grace_seconds: float = 3.0

    def __init__(
        self,
        *,
        settings: BatonSettings | None = None,
        key: str | None = None,
        api: str | None = None,
        tenant_id: str | None = None,
        agent_config_id: str | None = None,
        name: str | None = None,
        labels: list[str] | None = None,
        env: dict[str, str] | None = None,
        max_polls: int | None = None,
        agent_address: str | None = None,
        no_cloud_logs: bool = False,
        log_level: str | None = None,
        limit: int | None = None,
        client: AgentApi | None = None,
        agent_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = resolve_settings(
            settings,
            api={"url": api, "key": key, "tenant_id": tenant_id},
            agent={
                "agent_config_id": agent_config_id,
                "name": name,
                "labels": labels,
                "env": env,
                "max_polls": max_polls,
                "agent_address": agent_address,
                "limit": limit,
                **(agent_overrides or {}),
            },
        )
        agent_settings = self.settings.agent
        self.labels = normalize_labels([*agent_settings.labels, *self.extra_labels()])
        self.name = agent_settings.name or default_agent_name(self.agent_type)
        self.send_logs_to_api = False if no_cloud_logs else self.settings.logging.send_to_api
        self.log_level = (log_level or self.settings.logging.level).upper()
        self.agent_id: str | None = None
        self.tenant_id: str | None = None
        self.status = AgentStatus(name=self.name, deadline_seconds=agent_settings.health_deadline_seconds)
        self.status.platform_check = self.platform_problem
        self.policy = ErrorPolicy(agent_settings.max_consecutive_errors, Backoff())
        self.registry = RunRegistry(agent_settings.limit)
        self._client = client
        self._owns_client = client is None
        self._api: ApiCalls | None = None
        self._stop = StopControl(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.health_server: HealthServer | None = None

    # --- what a driver implements ------------------------------------------------------------

    @abc.abstractmethod
    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        """Start the flow-run process for ``claimed`` with ``env`` (complete but for the platform's base env).

        Raises:
            DeploymentError: the run cannot be deployed; the message becomes its Failed message.
        """

    @abc.abstractmethod
    async def inspect(self, deployment: Deployment) -> int | None:
        """None while the deployment runs; its exit code once it has ended."""

    @abc.abstractmethod
    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        """Stop the deployment: politely, then by force after ``grace_seconds``; harmless if it already ended."""

    def extra_labels(self) -> list[str]:
        """Labels the driver adds to the agent's (the local agent's hostname)."""
        return []

    def platform_problem(self) -> str | None:
        """Why the platform (Docker daemon, Kubernetes API) is unusable, or None. Called from the health thread."""
        return None

    def detach(self, deployment: Deployment) -> None:
        """The agent exits while ``deployment`` still runs (``--max-polls``, fatal error): let it go on alone."""
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
        asyncio.run(self.run())

    async def run(self) -> None:
        """:meth:`start` for callers that already have an event loop."""
        self._loop = asyncio.get_running_loop()
        self._stop.attach(self._loop)
        try:
            await self._startup()
            if self.settings.agent.max_polls == 0:
                logger.info("--max-polls 0: registered, making no claim calls")
                return
            await self._stop.supervise()
        finally:
            if self._owns_client and self._client is not None:
                self._client.close()

    def stop(self, cold: bool = False) -> None:
        """Ask for a warm stop (a second call, or ``cold=True``: a cold stop). Thread-safe, like a signal."""
        self._stop.request_threadsafe(cold)

    def poke(self) -> None:
        """Cut the poll loop's current wait short (``GET /api/poke``). Thread-safe."""
        self._call_soon(self._stop.poke)

    def deployments_changed(self) -> None:
        """Tell the watch loop to inspect deployments now, not at its next tick. Thread-safe."""
        self._call_soon(self._stop.wake_watch)

    @property
    def api(self) -> ApiCalls:
        """The agent's API calls, under its error policy."""
        if self._api is None:
            self._api = ApiCalls(self._require_client(), self.policy, self.status)
        return self._api

    # --- start-up ------------------------------------------------------------------------------

    def _require_client(self) -> AgentApi:
        if self._client is None:
            from baton.client.http import Client

            self._client = Client.from_settings(self.settings)
        return self._client

    async def _startup(self) -> None:
        client = self._require_client()
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

    # --- the poll loop ---------------------------------------------------------------------------

    async def poll_loop(self) -> None:
        """Claim runs while slots are free, until ``--max-polls`` claim calls or a stop."""
        max_polls = self.settings.agent.max_polls
        wait_seconds = self.settings.agent.poll_wait_seconds
        self.status.polling = True
        try:
            while not self._stop.stopping:
                if max_polls is not None and self.status.polls >= max_polls:
                    logger.info("made %d claim calls (--max-polls): claiming no more", self.status.polls)
                    return
                free = self.registry.free_slots()
                if free == 0:  # every --limit slot is busy: wait for one to free up
                    await self._stop.wait_poll(timeout=wait_seconds or 1.0)
                    continue
                await self._claim(free, wait_seconds)
        finally:
            self.status.polling = False

    async def _claim(self, free: int, wait_seconds: float) -> None:
        client, agent_id = self._require_client(), self.agent_id
        assert agent_id is not None
        try:
            # A daemon thread, not to_thread: a cold stop must not wait for the server's long poll to end.
            response = await run_in_daemon_thread(lambda: client.claim(agent_id, limit=free, wait_seconds=wait_seconds))
        except ServerUnavailableError as exc:
            delay = self.api.failed(exc, "poll")
            logger.warning("claim failed (%s); retrying in %.1fs", exc, delay)
            await self._stop.wait_poll(timeout=delay, poke_only=True)
            return
        self.api.succeeded("poll")
        self.status.polls += 1
        for claimed in response.runs:
            self._accept(claimed)

    def _accept(self, claimed: ClaimedRun) -> None:
        self.status.claims += 1
        run = self.registry.add(claimed)
        self._update_active()
        logger.info("claimed run %s (%s) of flow %s", run.id, run.name, claimed.flow.name)
        self._stop.spawn(self._launch(run), f"launch {run.id}", launch=True)

    # --- one claimed run: deploy, then Submitted or Failed ---------------------------------------

    def run_env(self, claimed: ClaimedRun) -> dict[str, str]:
        assert self.tenant_id is not None
        return build_run_env(
            claimed,
            api_url=self.settings.api.url,
            tenant_id=self.tenant_id,
            agent_env=self.settings.agent.env,
            agent_labels=self.labels,
            send_logs_to_api=self.send_logs_to_api,
        )

    async def _launch(self, run: ActiveRun) -> None:
        if self._stop.stopping:
            await self._release(run)
            return
        run.deploy_task = asyncio.ensure_future(self.deploy(run.claimed, self.run_env(run.claimed)))
        try:
            # Shielded: a cold stop cancels this task but still collects (and kills) what the deploy started.
            deployment = await asyncio.shield(run.deploy_task)
        except Exception as exc:  # any deployment problem fails the run with its message (seed docs)
            await self._fail_deployment(run, exc)
            return
        run.deployment, run.phase = deployment, Phase.DEPLOYED
        if run.cancel_requested:
            await self.stop_deployment(run, "Cancelled", f"cancelled before it was submitted by agent {self.name}")
            return
        await self._submit(run, deployment)

    async def _submit(self, run: ActiveRun, deployment: Deployment) -> None:
        try:
            await self.api.set_state(run.id, "Submitted", deployment.message, deployment.data)
        except ConflictError as exc:
            # Cancelled (or its lease lost) while we deployed it: what we started must not run.
            logger.warning("run %s refused Submitted (%s): stopping what was deployed", run.id, exc.detail)
            await self._kill_quietly(run)
            return
        except ClientError:
            await self._kill_quietly(run)
            raise
        run.submitted = True
        self.status.deployments += 1
        logger.info("submitted run %s (%s): %s", run.id, run.name, deployment.message)
        self._stop.wake_heartbeat()  # an early end must be reported, and cancels noticed, soon

    async def _kill_quietly(self, run: ActiveRun) -> None:
        run.phase = Phase.KILLING
        if run.deployment is not None:
            await self.kill(run.deployment, self.kill_grace_seconds)
        self._forget(run)

    async def _fail_deployment(self, run: ActiveRun, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        level = logging.ERROR if isinstance(exc, ClientError | ConfigurationError) else logging.WARNING
        logger.log(level, "could not deploy run %s (%s): %s", run.id, run.name, message, exc_info=exc)
        self.status.deployment_failures += 1
        await self.api.set_state_if_allowed(run.id, "Failed", message)
        self._forget(run)

    async def _release(self, run: ActiveRun) -> None:
        await self.api.set_state_if_allowed(run.id, "Scheduled", f"released by agent {self.name} on shutdown")
        logger.info("released run %s: the agent is stopping", run.id)
        self._forget(run)

    async def stop_deployment(self, run: ActiveRun, state: str, message: str, grace: float | None = None) -> None:
        """Kill ``run``'s deployment, then set its final ``state`` (a final state set meanwhile wins)."""
        run.phase = Phase.KILLING
        if run.deployment is not None:
            await self.kill(run.deployment, self.kill_grace_seconds if grace is None else grace)
        await self.api.set_state_if_allowed(run.id, state, message)
        logger.info("stopped run %s (%s): %s", run.id, state, message)
        self._forget(run)

    def _forget(self, run: ActiveRun) -> None:
        self.registry.remove(run.id)
        self._run_left()

    def _run_left(self) -> None:
        self._update_active()
        self._stop.wake_poll()
        self._stop.notify_changed()

    def _update_active(self) -> None:
        self.status.active_runs = self.registry.busy_slots()

    # --- heartbeat and watch -------------------------------------------------------------------

    async def heartbeat_once(self) -> None:
        """Report deployments; stop the ones the server wants cancelled."""
        client, agent_id = self._require_client(), self.agent_id
        assert agent_id is not None
        report = self.registry.heartbeat_report()
        response = await asyncio.to_thread(client.agent_heartbeat, agent_id, report)
        self.api.succeeded("heartbeat")
        for item in report:
            run = self.registry.get(item["flow_run_id"])
            if not item["alive"] and run is not None and run.phase is Phase.ENDED:
                self._forget(run)
        for run_id in response.failed:
            logger.warning("run %s ended without a final state: the server marked it Failed", run_id)
        for run_id in response.cancel:
            self._stop.spawn(self._cancel(run_id), f"cancel {run_id}")

    async def _cancel(self, run_id: str) -> None:
        run = self.registry.get(run_id)
        message = f"cancelled: agent {self.name} stopped its deployment"
        if run is None:
            # Not ours any more (an agent restarted under the same identity): nothing to kill.
            await self.api.set_state_if_allowed(
                run_id, "Cancelled", f"cancelled: agent {self.name} holds no deployment"
            )
            return
        if run.phase is Phase.KILLING:
            return
        run.cancel_requested = True
        if run.phase is Phase.CLAIMED:
            return  # _launch stops it as soon as its deploy returns
        await self.stop_deployment(run, "Cancelled", message)

    async def inspect_deployments(self) -> None:
        """Record the end of every deployment that has ended."""
        for run in self.registry.in_phase(Phase.DEPLOYED):
            assert run.deployment is not None
            exit_code = await self.inspect(run.deployment)
            if exit_code is None or run.phase is not Phase.DEPLOYED:
                continue
            run.phase, run.exit_code = Phase.ENDED, exit_code
            logger.info("run %s (%s) ended with exit code %s", run.id, run.name, exit_code)
            self._run_left()
            self._stop.wake_heartbeat()

    # --- helpers ----------------------------------------------------------------------------------

    def _call_soon(self, callback: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(callback)
