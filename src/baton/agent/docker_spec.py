"""What the Docker agent decides before it talks to the daemon: pure functions, no Docker calls.

- ``--volume host:container[:ro|rw]``: a host path (absolute, ``~`` or ``./``) is a bind mount, anything else that is
  a valid name is a named volume (created if missing). Malformed specs are a :class:`ConfigurationError` when the
  agent is built, naming the spec.
- ``--network``: the first network is given at creation (``host`` and ``none`` become the network mode, and then
  admit no other network); the others are connected to the container before it starts.
- The image of a run: its run config's, else its ``docker`` storage's, else the agent's default; the registry an
  image comes from, for the allow-list.
- The API address inside a container: on the host network the agent's own URL works as it is; on any other
  network ``localhost``/``127.0.0.1`` would be the container itself, so such a URL is rewritten to
  ``host.docker.internal``, which ``extra_hosts`` maps to the host (``host-gateway``, Docker 20.10+). The API
  server must then listen on an address the containers can reach (not only 127.0.0.1).

Usage::

    volumes = [parse_volume(spec) for spec in ["/data:/data:ro", "cache:/cache"]]
    networks = plan_networks(["host"])
    url, gateway = container_api_url("http://127.0.0.1:4200", host_network=networks.host_network)
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from docker import APIClient
from docker.auth import resolve_index_name, resolve_repository_name
from docker.errors import APIError, DockerException, InvalidRepository
from docker.utils import parse_repository_tag
from pydantic import BaseModel, ConfigDict

from baton.agent.docker_policy import DockerPolicy
from baton.agent.driver import (
    LOG_TAIL_LINES,
    MAX_END_MESSAGE_CHARS,
    Deployment,
    Recovered,
    is_run_id,
    with_last_lines,
)
from baton.agent.env import is_loopback_host
from baton.exceptions import ConfigurationError, DeploymentError
from baton.schemas.core import StorageType
from baton.schemas.responses import ClaimedRun

logger = logging.getLogger("baton.agent")

HOST_GATEWAY_NAME = "host.docker.internal"
# Network modes that replace the container's network stack: no other network can be connected.
EXCLUSIVE_NETWORKS = frozenset({"host", "none"})
# The labels every flow-run container carries.
LABEL_FLOW_RUN_ID = "io.baton.flow-run-id"
LABEL_FLOW_ID = "io.baton.flow-id"
LABEL_FLOW_NAME = "io.baton.flow-name"
LABEL_AGENT = "io.baton.agent"  # the agent's name: a restart under it finds its containers (recover)
LABEL_TENANT_ID = "io.baton.tenant-id"

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the daemon's rule for volume names
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class VolumeSpec:
    """One ``--volume``: ``source`` is an absolute host path (``named`` False), a volume name, or empty for an
    anonymous volume (Docker's ``-v /path``: a new volume for each container, removed with it)."""

    source: str
    target: str
    mode: str
    named: bool

    @property
    def anonymous(self) -> bool:
        return not self.source

    @property
    def bind(self) -> str:
        """The spec as the daemon's ``Binds`` entry."""
        return f"{self.source}:{self.target}:{self.mode}"


def parse_volume(spec: str) -> VolumeSpec:
    """Parse ``host:container[:ro|rw]``; a host path may be absolute, ``~/...`` or ``./...`` (made absolute here).
    A bare absolute ``/container/path`` is an anonymous volume there (Prefect 1's and Docker's ``-v /path``).

    Raises:
        ConfigurationError: the spec is malformed; the message quotes it.
    """
    parts = spec.split(":")
    if len(parts) == 1 and spec.startswith("/"):
        return VolumeSpec("", spec, "rw", named=False)
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
        if mode not in ("ro", "rw"):
            raise ConfigurationError(f"--volume {spec!r}: the mode must be ro or rw, not {mode!r}")
    if len(parts) != 2 or not all(parts):
        raise ConfigurationError(
            f"--volume {spec!r}: expected HOST:CONTAINER[:ro|rw], e.g. /srv/data:/data:ro, or a bare /container/path"
        )
    source, target = parts
    if not target.startswith("/"):
        raise ConfigurationError(f"--volume {spec!r}: the container path {target!r} must be absolute")
    if source.startswith(("/", "~", ".")):
        return VolumeSpec(os.path.abspath(os.path.expanduser(source)), target, mode, named=False)
    if _VOLUME_NAME.match(source):
        return VolumeSpec(source, target, mode, named=True)
    raise ConfigurationError(
        f"--volume {spec!r}: {source!r} is neither a host path (absolute, ~/ or ./) nor a volume name "
        "(letters, digits, _ . -)"
    )


def parse_volumes(specs: list[str]) -> list[VolumeSpec]:
    """Parse every spec; two volumes on one container path are refused too.

    Raises:
        ConfigurationError: a malformed spec, or a container path mounted twice.
    """
    volumes = [parse_volume(spec) for spec in specs]
    targets = [volume.target for volume in volumes]
    twice = sorted({target for target in targets if targets.count(target) > 1})
    if twice:
        raise ConfigurationError(f"--volume: container path(s) {', '.join(twice)} mounted more than once")
    return volumes


@dataclass(frozen=True)
class NetworkPlan:
    """Where a container is attached: ``mode`` at creation (None: the daemon's default), ``connect`` after."""

    mode: str | None = None
    connect: tuple[str, ...] = ()

    @property
    def host_network(self) -> bool:
        return self.mode == "host"


def plan_networks(networks: list[str]) -> NetworkPlan:
    """The first network at creation, the others connected after it.

    Raises:
        ConfigurationError: an empty or repeated name, or host/none together with another network.
    """
    names = [name.strip() for name in networks]
    if any(not name for name in names):
        raise ConfigurationError("--network: a network name cannot be empty")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"--network: a network is given twice in {names}")
    exclusive = EXCLUSIVE_NETWORKS.intersection(names)
    if exclusive and len(names) > 1:
        raise ConfigurationError(
            f"--network {sorted(exclusive)[0]} shares (or removes) the host's network stack: "
            "it cannot be combined with other networks"
        )
    if not names:
        return NetworkPlan()
    return NetworkPlan(mode=names[0], connect=tuple(names[1:]))


def image_of(claimed: ClaimedRun, default_image: str) -> str:
    """The run config's image, else the ``docker`` storage's, else ``default_image``."""
    if claimed.flow_run.run_config.image:
        return claimed.flow_run.run_config.image
    storage = claimed.flow.storage
    if storage.type == StorageType.DOCKER and storage.image:
        return storage.image
    return default_image


def registry_of(image: str) -> str:
    """The registry host ``image`` is pulled from (``docker.io`` for short names like ``python:3.11``).

    Raises:
        DeploymentError: not a valid image reference.
    """
    repository, _tag = parse_repository_tag(image)
    try:
        registry, _name = resolve_repository_name(repository)
    except InvalidRepository as exc:
        raise DeploymentError(f"invalid image name {image!r}: {exc}") from exc
    return str(registry)


def normalize_registries(registries: list[str]) -> frozenset[str]:
    """Allow-list entries as :func:`registry_of` spells registries (``index.docker.io`` is ``docker.io``)."""
    return frozenset(str(resolve_index_name(entry.strip())) for entry in registries if entry.strip())


def container_api_url(url: str, host_network: bool) -> tuple[str, bool]:
    """The API URL as a container must use it, and whether ``host.docker.internal`` must be mapped to the host.

    On the host network the URL works as it is. Elsewhere a loopback host would be the container itself, so it
    is replaced by ``host.docker.internal`` (port, path and scheme kept).
    """
    if host_network:
        return url, False
    parts = urlsplit(url)
    host = parts.hostname
    if host is None or not is_loopback_host(host):
        return url, False
    netloc = HOST_GATEWAY_NAME if parts.port is None else f"{HOST_GATEWAY_NAME}:{parts.port}"
    if parts.username is not None:
        credentials = parts.username if parts.password is None else f"{parts.username}:{parts.password}"
        netloc = f"{credentials}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc)), True


def container_name(claimed: ClaimedRun) -> str:
    """``baton-<run name>-<first 8 characters of the run id>``: readable in ``docker ps``, unique per run."""
    run = claimed.flow_run
    slug = _NAME_UNSAFE.sub("-", run.name).strip("-_.")[:60] or "run"
    short_id = run.id.replace("-", "")[:8]
    return f"baton-{slug}-{short_id}"


def container_labels(claimed: ClaimedRun, agent_name: str, tenant_id: str) -> dict[str, str]:
    """The labels that tie a container to its flow run (``docker ps --filter label=io.baton.flow-run-id=...``) and
    to the agent that made it."""
    return {
        LABEL_FLOW_RUN_ID: claimed.flow_run.id,
        LABEL_FLOW_ID: claimed.flow.id,
        LABEL_FLOW_NAME: claimed.flow.name,
        LABEL_AGENT: agent_name,
        LABEL_TENANT_ID: tenant_id,
    }


def deployment_of(container: Container) -> Deployment:
    """A container as ``deploy`` returns it; Submitted stores its ``data``."""
    return Deployment(
        message=f"Container ID: {container.id}",
        data={"container_id": container.id, "container_name": container.name, "image": container.image},
        handle=container,
    )


def recovered_containers(client: APIClient, agent_name: str) -> list[Recovered]:
    """The containers labelled with this agent's name that the daemon still holds (made before a restart)."""
    found: list[Recovered] = []
    for item in client.containers(all=True, filters={"label": f"{LABEL_AGENT}={agent_name}"}):
        labels = item.get("Labels") or {}
        run_id, names = labels.get(LABEL_FLOW_RUN_ID), item.get("Names") or []
        if not is_run_id(run_id) or labels.get(LABEL_AGENT) != agent_name:
            continue
        name = str(names[0] if names else item["Id"][:12]).lstrip("/")
        container = Container(id=str(item["Id"]), name=name, image=str(item.get("Image") or ""))
        # Matched on its id alone: the image the daemon lists is a digest once its tag has moved on
        deployment = Deployment(f"Container ID: {container.id}", {"container_id": container.id}, container)
        found.append(Recovered(str(run_id), deployment, labels.get(LABEL_TENANT_ID)))
    return found


def without_env_values(text: str, env: dict[str, str]) -> str:
    """``text`` with each ``NAME=value`` of ``env`` it quotes masked: the daemon quotes a refused variable whole
    (``invalid environment variable: =value``), and run-config values are secrets (never logged or stored)."""
    for name, value in env.items():
        text = text.replace(f"{name}={value}", f"{name}=********")
    return text


def unix_socket_problem(address: str) -> str | None:
    """Why nothing answers on a ``unix://`` daemon socket, or None (also for other kinds of address).

    Checked before the SDK connects: its unix-socket connection leaks the socket when the connect fails, which
    a daemon that is down would make happen every few seconds.
    """
    for prefix in ("unix://", "http+unix://"):
        if address.startswith(prefix):
            path = address[len(prefix) :]
            break
    else:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(path)
        except OSError as exc:
            return f"cannot connect to {path}: {exc.strerror or exc}"
    return None


def loopback_api_warning(api_url: str, network_mode: str | None) -> str | None:
    """What to tell the operator at start when containers would call a loopback API through the host's gateway,
    where a server listening on 127.0.0.1 only does not answer; None when they can reach it as it is."""
    seen, gateway = container_api_url(api_url, network_mode == "host")
    if not gateway:
        return None
    return (
        f"the API is at {api_url}, a loopback address: flow-run containers will call {seen} (this host, seen from "
        f"the {network_mode or 'default bridge'} network), so the server must listen on an address they reach, not "
        "only 127.0.0.1; else use --network host"
    )


class DockerOptions(BaseModel):
    """The Docker driver's options (``baton agent docker start``).

    Args:
        base_url: the daemon's address (``-b/--base-url``); default ``DOCKER_HOST``, else the local socket.
        no_pull: never pull: a run whose image is not present locally fails (``--no-pull``).
        show_flow_logs: stream the containers' output to the agent's stdout, prefixed by the run name.
        volumes: ``HOST:CONTAINER[:ro|rw]`` mounts for every container, a host path or a named volume (created if
            missing); or a bare ``/container/path``, an anonymous volume (one per container, removed with it).
        networks: the first is given at creation (``host``/``none``: the network mode), the others connected
            before the container starts.
        docker_client_timeout: seconds before a Docker API call times out (default 60).
        registry_allow_list: registries images may come from (``docker.io``, ``registry.example.com:5000``);
            None allows any. Local-only images are always allowed.
        default_image: the image of runs that name none (default ``baton:<version>``).
        policy: what run configs may ask of the host (``--allow-host-config``, ``--allow-bind``, ...); default:
            resource limits only. A run config asking for more fails its run before any container is created.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    base_url: str | None = None
    no_pull: bool = False
    show_flow_logs: bool = False
    volumes: list[str] = []
    networks: list[str] = []
    docker_client_timeout: float | None = None
    registry_allow_list: list[str] | None = None
    default_image: str | None = None
    policy: DockerPolicy = DockerPolicy()


@dataclass
class Container:
    """A deployment's handle: the container of one flow run."""

    id: str
    name: str
    image: str
    log_thread: threading.Thread | None = None


def explain_api_error(exc: BaseException) -> str:
    """The daemon's own words for an API error (``network x not found``), else the exception's text."""
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


def stream_logs(client: APIClient, container: Container, prefix: str) -> None:
    """Copy a container's output to the agent's stdout, each line prefixed by the run's name, until it ends."""
    pending = b""
    try:
        for chunk in client.logs(container.id, stream=True, follow=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                sys.stdout.write(prefix + line.decode(errors="replace") + "\n")
            sys.stdout.flush()
    except (DockerException, requests.RequestException) as exc:  # the daemon went away, or the container
        logger.debug("stopped streaming the logs of %s: %s", container.name, exc)
    if pending:
        sys.stdout.write(prefix + pending.decode(errors="replace") + "\n")
        sys.stdout.flush()


def end_message(client: APIClient, container: Container, info: dict[str, Any]) -> str | None:
    """For a container that failed: OOM-killed or not, its error, its last log lines. None if it succeeded."""
    state = info.get("State") or {}
    oom = bool(state.get("OOMKilled"))
    if state.get("ExitCode") == 0 and not oom:
        return None
    what = f"container {container.name} (image {container.image})"
    if oom:
        limit = (info.get("HostConfig") or {}).get("Memory") or 0
        what += f" was OOM-killed: it ran out of memory (limit {limit} bytes)" if limit else " was OOM-killed"
    if state.get("Error"):
        what += f"; error: {state['Error']}"
    if container.log_thread is not None:
        container.log_thread.join(timeout=2)
    try:
        raw: bytes = client.logs(container.id, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
    except (DockerException, requests.RequestException) as exc:
        return f"{what}; its logs cannot be read: {exc}"[:MAX_END_MESSAGE_CHARS]
    return with_last_lines(what, raw.decode(errors="replace"))
