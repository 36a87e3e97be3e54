"""The Docker agent: each flow run is one container of the run's image, running ``python -m baton.engine``.

The image is the run config's (``DockerRun(image=...)``), else the ``docker`` storage's, else the agent's default
``baton:<version>``. It is pulled unless ``no_pull`` or it is local-only (present, with no registry digest: built
here); with a ``registry_allow_list``, an image of another registry fails its run. Each container carries the
labels ``io.baton.flow-run-id``, ``io.baton.flow-id`` and ``io.baton.flow-name``, the run's environment
(DESIGN.md §6) and the agent's volumes and networks (see ``docker_spec.py``, also for how the API address is seen
from inside containers). What a run config may ask of the host (host_config, binds, networks, ports, images) is
the operator's policy (``docker_policy.py``): a run config asking for more fails before any container exists.
Containers are not ``auto_remove``: the agent removes each one once it has read its exit code, its OOM flag and its
last log lines, which go into the Failed message of a run that ended without a final state. A cancel or a cold
stop is ``docker stop`` (SIGTERM, then SIGKILL after the grace period), then removal.

Every Docker call blocks, so each runs in a worker thread. The daemon is pinged in the background: while it does
not answer, :meth:`DockerDriver.problem` says why (health 503), the agent claims nothing and releases what
it had claimed but not deployed; it resumes by itself when the daemon is back.

Usage::

    from baton.agent import DockerAgent, DockerPolicy

    DockerAgent(labels=["dev"], networks=["host"], volumes=["/srv/data:/data:ro"], show_flow_logs=True).start()
    DockerAgent(policy=DockerPolicy(allow_bind=["/srv/shared"], allow_image=["registry.example.com/*"])).start()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import threading
from collections.abc import Mapping
from typing import Any, Unpack, cast

import requests
from docker import APIClient
from docker.errors import APIError, DockerException, NotFound
from docker.utils import convert_volume_binds, kwargs_from_env

from baton import __version__
from baton.agent.base import Agent, AgentOptions, agent_settings, runtime_options
from baton.agent.capacity import host_run_limit
from baton.agent.docker_policy import DockerPolicy, PolicyCheck, refusal_message
from baton.agent.docker_spec import (
    EXCLUSIVE_NETWORKS,
    HOST_GATEWAY_NAME,
    LABEL_FLOW_RUN_ID,
    Container,
    DockerOptions,
    NetworkPlan,
    VolumeSpec,
    container_api_url,
    container_labels,
    container_name,
    deployment_of,
    end_message,
    explain_api_error,
    image_of,
    loopback_api_warning,
    normalize_registries,
    parse_volumes,
    plan_networks,
    recovered_containers,
    registry_of,
    stream_logs,
    unix_socket_problem,
    without_env_values,
)
from baton.agent.driver import Deployment, DriverEvents, Ended, Recovered
from baton.agent.option_specs import DOCKER_OPTIONS
from baton.exceptions import ConfigurationError, DeploymentError, PlatformUnavailableError
from baton.schemas.core import RunConfig, RunConfigType
from baton.schemas.responses import ClaimedRun

logger = logging.getLogger("baton.agent")

DEFAULT_CLIENT_TIMEOUT_SECONDS = 60.0
COMMAND = ["python", "-m", "baton.engine"]
# How often the daemon is pinged in the background (health, the claim gate, recovery).
DAEMON_CHECK_SECONDS = 2.0
_RUN_CONFIG_TYPES = {RunConfigType.DOCKER, RunConfigType.UNIVERSAL}
_ENDED_STATUSES = {"exited", "dead"}
# A daemon that does not answer (stopped, socket gone, hung), as opposed to one that answers with an error.
_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


class DockerAgent(Agent):
    """An :class:`~baton.agent.base.Agent` with a :class:`DockerDriver`: each flow run is a container.

    Takes the common agent options and those of :class:`DockerOptions`; ``policy`` may also be a mapping of
    :class:`~baton.agent.docker_policy.DockerPolicy`'s fields.

    Raises:
        ConfigurationError: a malformed volume, an impossible network combination, a bad timeout, an invalid
            policy, or an option common to every agent.
    """

    driver: DockerDriver

    def __init__(
        self,
        *,
        base_url: str | None = None,
        no_pull: bool = False,
        show_flow_logs: bool | None = None,
        volumes: list[str] | None = None,
        networks: list[str] | None = None,
        docker_client_timeout: float | None = None,
        registry_allow_list: list[str] | None = None,
        default_image: str | None = None,
        policy: DockerPolicy | Mapping[str, Any] | None = None,
        **options: Unpack[AgentOptions],
    ) -> None:
        settings = agent_settings(DOCKER_OPTIONS, {"show_flow_logs": show_flow_logs}, **options)
        driver = DockerDriver(
            DockerOptions(
                base_url=base_url,
                no_pull=no_pull,
                show_flow_logs=settings.agent.show_flow_logs,
                volumes=list(volumes or []),
                networks=list(networks or []),
                docker_client_timeout=docker_client_timeout,
                registry_allow_list=registry_allow_list,
                default_image=default_image,
                policy=DockerPolicy.parse(policy),
            )
        )
        super().__init__(driver, settings=settings, **runtime_options(options))


class DockerDriver:
    """Deploys flow runs as Docker containers (see the module docstring).

    Raises:
        ConfigurationError: a malformed volume, an impossible network combination, a bad timeout.
    """

    agent_type = "docker"
    watch_interval_seconds = 0.5

    def __init__(self, options: DockerOptions | None = None) -> None:
        options = options or DockerOptions()
        timeout = (
            DEFAULT_CLIENT_TIMEOUT_SECONDS if options.docker_client_timeout is None else options.docker_client_timeout
        )
        if not timeout > 0:
            raise ConfigurationError(f"--docker-client-timeout must be positive, not {options.docker_client_timeout}")
        self.options = options
        self.base_url = options.base_url
        self.no_pull = options.no_pull
        self.volumes: list[VolumeSpec] = parse_volumes(options.volumes)
        self.networks: NetworkPlan = plan_networks(options.networks)
        self.docker_client_timeout = timeout
        allowed = options.registry_allow_list
        self.registry_allow_list = None if allowed is None else normalize_registries(allowed)
        self.default_image = options.default_image or f"baton:{__version__}"
        self.run_policy = options.policy
        # Containers share the daemon's host, most often this one (a remote daemon: give --limit)
        self.default_limit: int | None = host_run_limit()
        self._events: DriverEvents | None = None
        self._docker: APIClient | None = None  # calls with docker_client_timeout
        self._streams: APIClient | None = None  # log streams and waits: no timeout
        self._connect_lock = threading.Lock()
        self._problem: str | None = None
        self._stop_checking = threading.Event()
        self._checker: threading.Thread | None = None
        self._leftovers: set[str] = set()  # containers to remove once the daemon answers again
        self._agent_name = ""  # labels its containers (open)
        self._found: list[Recovered] = []  # containers made before a restart, for recover()

    def labels(self) -> list[str]:
        return []

    def check_api_url(self, api_url: str) -> str | None:
        if self.networks.mode == "none":
            return "--network none: flow-run containers cannot reach the API, their runs will fail"
        return loopback_api_warning(api_url, self.networks.mode)

    # --- the daemon ------------------------------------------------------------------------------

    @property
    def daemon_address(self) -> str:
        """Where the daemon is expected, for messages."""
        return self.base_url or str(kwargs_from_env().get("base_url") or "unix:///var/run/docker.sock")

    async def open(self, events: DriverEvents) -> None:
        self._events = events
        self._agent_name = events.name
        await asyncio.to_thread(self._stream_client)  # connects both clients: a deploy then needs no new one
        try:
            self._found = await asyncio.to_thread(recovered_containers, self._docker_client(), events.name)
        except (DockerException, requests.RequestException) as exc:
            logger.warning("cannot list the containers of an earlier run of this agent: %s", exc)
        self._checker = threading.Thread(target=self._check_daemon_loop, name="baton-docker-daemon", daemon=True)
        self._checker.start()

    async def close(self) -> None:
        self._stop_checking.set()
        if self._checker is not None:
            await asyncio.to_thread(self._checker.join, 2 * DAEMON_CHECK_SECONDS)
        for client in (self._docker, self._streams):
            if client is not None:
                client.close()

    def problem(self) -> str | None:
        return self._problem

    def _docker_client(self) -> APIClient:
        """The Docker client, connected on first use.

        Raises:
            PlatformUnavailableError: the daemon cannot be reached (or the address is malformed).
        """
        with self._connect_lock:
            if self._docker is None:
                self._docker = self._new_client(self.docker_client_timeout)
            return self._docker

    def _new_client(self, timeout: float | None, version: str | None = None) -> APIClient:
        params: dict[str, Any] = kwargs_from_env()  # DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH
        if self.base_url:
            params["base_url"] = self.base_url
        problem = unix_socket_problem(self.daemon_address)
        if problem is not None:
            raise PlatformUnavailableError(
                f"cannot reach the Docker daemon at {self.daemon_address}: {problem} "
                "(is it running? point --base-url or DOCKER_HOST at it)"
            )
        try:
            # Without a version the client asks the daemon for its own: a first call that fails early and clearly.
            client = APIClient(timeout=timeout, version=version, max_pool_size=32, **params)
            if version is None:
                client.ping()
        except (DockerException, requests.RequestException) as exc:
            raise PlatformUnavailableError(
                f"cannot reach the Docker daemon at {self.daemon_address}: {exc} "
                "(is it running? point --base-url or DOCKER_HOST at it)"
            ) from exc
        return client

    def _stream_client(self) -> APIClient:
        """A second client, without a timeout: log streams wait for output as long as a container runs."""
        version = self._docker_client().api_version
        with self._connect_lock:
            if self._streams is None:
                self._streams = self._new_client(None, version=version)
            return self._streams

    def _check_daemon_loop(self) -> None:
        while not self._stop_checking.wait(DAEMON_CHECK_SECONDS):
            self.check_daemon()

    def check_daemon(self) -> None:
        """Ping the daemon; record its loss, or its return (the agent then claims again at once)."""
        problem = unix_socket_problem(self.daemon_address)
        if problem is not None:
            self._lost(problem)
            return
        try:
            self._docker_client().ping()
        except (DockerException, requests.RequestException, PlatformUnavailableError) as exc:
            self._lost(exc)
            return
        if self._problem is not None:
            logger.warning("the Docker daemon at %s answers again: claiming runs", self.daemon_address)
            self._problem = None
            if self._events is not None:
                self._events.platform_back()
        self._remove_leftovers()

    def _lost(self, reason: object) -> None:
        problem = f"the Docker daemon at {self.daemon_address} does not answer: {reason}"
        if self._problem is None:
            logger.error("%s; claiming no runs until it is back", problem)
        self._problem = problem

    # --- deploy --------------------------------------------------------------------------------

    def command(self, claimed: ClaimedRun) -> list[str]:
        """The container's command: the engine, run by the image's ``python``."""
        return list(COMMAND)

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        run_config = claimed.flow_run.run_config
        if run_config.type not in _RUN_CONFIG_TYPES:
            raise DeploymentError(
                f"the docker agent runs only docker and universal run configs; this run's is {run_config.type.value}"
            )
        self._check_policy(claimed)
        return deployment_of(await asyncio.to_thread(self._deploy, claimed, env))

    def _check_policy(self, claimed: ClaimedRun) -> None:
        """Refuse a run config that asks for more than the operator allows, before anything reaches the daemon.

        Raises:
            DeploymentError: naming each refused option and the flag that would allow it.
        """
        # Symlinks under an allowed bind prefix are resolved here only when the daemon shares this filesystem.
        local_daemon = self.daemon_address.startswith(("unix://", "http+unix://"))
        check = PolicyCheck(
            self.run_policy,
            trusted_image=self.default_image,
            trusted_network=self.networks.mode,
            resolve=os.path.realpath if local_daemon else None,
        )
        refusals = check.refusals(claimed.flow_run.run_config, image_of(claimed, self.default_image))
        if refusals:
            message = refusal_message(refusals)
            logger.warning("run %s: %s", claimed.flow_run.id, message)
            raise DeploymentError(message)

    def _deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Container:
        client = self._docker_client()
        try:
            image = image_of(claimed, self.default_image)
            self._ensure_image(client, image)
            self._ensure_volumes(client)
            container = self._create(client, claimed, env, image)
            self._start(client, container, claimed.flow_run.run_config)
        except _UNREACHABLE as exc:
            self._lost(exc)
            raise DeploymentError(f"the Docker daemon at {self.daemon_address} does not answer: {exc}") from exc
        if self.options.show_flow_logs:
            prefix = f"[{claimed.flow_run.name}] "
            streams = self._stream_client()
            container.log_thread = threading.Thread(
                target=stream_logs, args=(streams, container, prefix), name=f"baton-logs-{container.name}", daemon=True
            )
            container.log_thread.start()
        logger.info("started container %s (%s) of image %s", container.name, container.id[:12], image)
        return container

    def _ensure_image(self, client: APIClient, image: str) -> None:
        """Make sure ``image`` is present: pulled unless ``no_pull`` or local-only; allowed by the allow-list.

        Raises:
            DeploymentError: a registry outside the allow-list, a missing image under no_pull, a failed pull.
        """
        try:
            local: dict[str, Any] | None = client.inspect_image(image)
        except NotFound:
            local = None
        except APIError as exc:
            raise DeploymentError(f"cannot inspect image {image}: {explain_api_error(exc)}") from exc
        if local is not None and not local.get("RepoDigests"):
            return  # built here: no registry to pull from or to allow
        self._check_registry(image)
        if self.no_pull:
            if local is None:
                raise DeploymentError(f"image {image} is not present locally and pulling is disabled (--no-pull)")
            return
        logger.info("pulling image %s", image)
        try:
            for event in client.pull(image, stream=True, decode=True):
                error = event.get("error") or (event.get("errorDetail") or {}).get("message")
                if error:
                    raise DeploymentError(f"cannot pull image {image}: {error}")
        except APIError as exc:
            raise DeploymentError(f"cannot pull image {image}: {explain_api_error(exc)}") from exc

    def _check_registry(self, image: str) -> None:
        allowed = self.registry_allow_list
        if allowed is None:
            return
        registry = registry_of(image)
        if registry not in allowed:
            listed = ", ".join(sorted(allowed)) or "empty"
            raise DeploymentError(
                f"image {image} is from registry {registry}, which is not in the agent's registry allow-list ({listed})"
            )

    def _ensure_volumes(self, client: APIClient) -> None:
        for volume in self.volumes:
            if not volume.named:
                continue
            try:
                client.inspect_volume(volume.source)
            except NotFound:
                logger.info("creating volume %s", volume.source)
                try:
                    client.create_volume(volume.source, labels={"io.baton.created-by": "docker-agent"})
                except APIError as exc:
                    raise DeploymentError(f"cannot create volume {volume.source}: {explain_api_error(exc)}") from exc

    def _network_mode(self, run_config: RunConfig) -> str | None:
        """The run config's ``host_config.network_mode`` if it sets one, else the agent's first network."""
        mode = run_config.host_config.get("network_mode")
        return str(mode) if mode else self.networks.mode

    def _host_config(self, client: APIClient, run_config: RunConfig, api_gateway: bool) -> dict[str, Any]:
        """The agent's volumes and network under the run config's ``host_config`` (binds and hosts are merged).

        Raises:
            DeploymentError: the run config's host_config is not valid for the Docker API.
        """
        given = dict(run_config.host_config)
        if given.pop("auto_remove", False):
            logger.warning("ignoring auto_remove in a run config: the agent removes containers once they have ended")
        binds = [volume.bind for volume in self.volumes if not volume.anonymous] + list(
            convert_volume_binds(given.pop("binds", None) or [])
        )
        hosts: dict[str, str] | list[str] = given.pop("extra_hosts", None) or {}
        if api_gateway:
            if isinstance(hosts, dict):
                hosts = {HOST_GATEWAY_NAME: "host-gateway", **hosts}
            else:
                hosts = [f"{HOST_GATEWAY_NAME}:host-gateway", *hosts]
        options: dict[str, Any] = {"network_mode": self._network_mode(run_config), **given}
        options.update(binds=binds or None, extra_hosts=hosts or None)
        given_options = {key: value for key, value in options.items() if value is not None}
        try:
            return cast(dict[str, Any], client.create_host_config(**given_options))
        except (TypeError, ValueError, DockerException) as exc:
            raise DeploymentError(f"invalid host_config in the run config: {exc}") from exc

    def _create(self, client: APIClient, claimed: ClaimedRun, env: dict[str, str], image: str) -> Container:
        run_config = claimed.flow_run.run_config
        api_url, gateway = container_api_url(env["BATON__API__URL"], self._network_mode(run_config) == "host")
        # PYTHONUNBUFFERED: the output reaches `docker logs` (and -f, and the Failed message) as it is written.
        environment = {"PYTHONUNBUFFERED": "1", **env, "BATON__API__URL": api_url}
        params: dict[str, Any] = {
            "image": image,
            "command": self.command(claimed),
            "environment": environment,
            "labels": container_labels(claimed, self._agent_name, env.get("BATON_TENANT_ID", "")),
            "host_config": self._host_config(client, run_config, gateway),
            "ports": list(run_config.ports) or None,
            "volumes": [volume.target for volume in self.volumes] or None,
        }
        name = container_name(claimed)
        try:
            try:
                created = client.create_container(name=name, **params)
            except APIError as exc:
                if exc.status_code != 409:
                    raise
                # The name is taken: the container of an earlier claim of this run is still being stopped.
                name = f"{name}-{secrets.token_hex(3)}"
                created = client.create_container(name=name, **params)
        except APIError as exc:
            detail = without_env_values(explain_api_error(exc), environment)
            raise DeploymentError(f"cannot create a container of image {image}: {detail}") from None
        return Container(id=str(created["Id"]), name=name, image=image)

    def _start(self, client: APIClient, container: Container, run_config: RunConfig) -> None:
        """Connect the other networks, then start; a failure removes the container."""
        mode = self._network_mode(run_config)
        connect = self.networks.connect if mode not in EXCLUSIVE_NETWORKS else ()
        step = "start it"
        try:
            for network in connect:
                step = f"connect it to network {network}"
                client.connect_container_to_network(container.id, network)
            step = "start it"
            client.start(container.id)
        except APIError as exc:
            self._remove(client, container)
            raise DeploymentError(
                f"created container {container.name} but could not {step}: {explain_api_error(exc)}"
            ) from exc
        except _UNREACHABLE:
            self._leftovers.add(container.id)
            raise

    # --- watch and stop --------------------------------------------------------------------------

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        container: Container = deployment.handle
        return await asyncio.to_thread(self._inspect, container)

    def _inspect(self, container: Container) -> Ended | None:
        if self._problem is not None:
            return None  # unknown until the daemon is back (the background check notices)
        client = self._docker_client()
        try:
            info: dict[str, Any] = client.inspect_container(container.id)
        except NotFound:
            return Ended(None, f"the container {container.name} was removed before the run reached a final state")
        except _UNREACHABLE as exc:
            self._lost(exc)
            return None
        except (DockerException, requests.RequestException) as exc:  # an error answer: look again at the next tick
            logger.warning("cannot inspect container %s: %s", container.name, exc)
            return None
        state = info.get("State") or {}
        if state.get("Status") not in _ENDED_STATUSES:
            return None
        exit_code = state.get("ExitCode")
        message = end_message(client, container, info)
        self._remove(client, container)
        return Ended(exit_code if isinstance(exit_code, int) else None, message)

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        container: Container = deployment.handle
        await asyncio.to_thread(self._stop, container, grace_seconds)

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        """A container this agent created before it restarted: still there, and labelled with this run."""
        container_id = data.get("container_id")
        if not isinstance(container_id, str) or not container_id:
            return None
        return await asyncio.to_thread(self._stop_stored, container_id, run_id, grace_seconds)

    def _stop_stored(self, container_id: str, run_id: str, grace_seconds: float) -> str | None:
        try:
            info = self._docker_client().inspect_container(container_id)
        except (DockerException, requests.RequestException):  # gone, or no daemon: nothing to stop here
            return None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_FLOW_RUN_ID) != run_id:
            return None
        name = str(info.get("Name") or container_id).lstrip("/")
        self._stop(
            Container(id=container_id, name=name, image=str((info.get("Config") or {}).get("Image"))), grace_seconds
        )
        return f"its container {name}"

    def _stop(self, container: Container, grace_seconds: float) -> None:
        if self._problem is not None:
            # Removed by force (so killed) once the daemon answers again, if it still exists then.
            logger.warning("cannot stop container %s now: %s", container.name, self._problem)
            self._leftovers.add(container.id)
            return
        client = self._docker_client()
        try:
            # The daemon sends the stop signal (SIGTERM), then SIGKILL after `t` seconds.
            client.stop(container.id, timeout=max(0, math.ceil(grace_seconds)))
        except NotFound:
            return
        except _UNREACHABLE as exc:
            self._lost(exc)
            self._leftovers.add(container.id)
            return
        except DockerException as exc:
            logger.warning("cannot stop container %s: %s; removing it by force", container.name, exc)
        self._remove(client, container)

    def _remove(self, client: APIClient, container: Container) -> None:
        """Remove a container (and its anonymous volumes); remembered for later if the daemon does not answer."""
        if container.log_thread is not None:
            container.log_thread.join(timeout=2)  # its last lines are on their way
        try:
            client.remove_container(container.id, v=True, force=True)
        except NotFound:
            pass
        except _UNREACHABLE as exc:
            self._lost(exc)
            self._leftovers.add(container.id)
        except APIError as exc:
            if exc.status_code == 409:  # "removal already in progress": a kill and the watch both remove it
                logger.debug("container %s is being removed already", container.name)
            else:
                logger.warning("cannot remove container %s: %s", container.name, explain_api_error(exc))
        except DockerException as exc:
            logger.warning("cannot remove container %s: %s", container.name, exc)
        else:
            logger.debug("removed container %s", container.name)

    def _remove_leftovers(self) -> None:
        for container_id in list(self._leftovers):
            self._leftovers.discard(container_id)
            self._remove(self._docker_client(), Container(container_id, container_id[:12], ""))

    async def recover(self) -> list[Recovered]:
        found, self._found = self._found, []
        return found

    def forget(self, deployment: Deployment) -> None:
        return None  # nothing is watched but what the agent holds

    def detach(self, deployment: Deployment) -> None:
        container: Container = deployment.handle
        # Remove it when it ends, if this process lives that long; else it stays, exited, until removed by hand
        # (`docker container prune --filter label=io.baton.flow-run-id`).
        name = f"baton-wait-{container.name}"
        threading.Thread(target=self._remove_when_done, args=(container,), name=name, daemon=True).start()

    def _remove_when_done(self, container: Container) -> None:
        with contextlib.suppress(DockerException, requests.RequestException, PlatformUnavailableError):
            client = self._new_client(None, version=self._docker_client().api_version)
            client.wait(container.id)
            self._remove(client, container)
            client.close()
