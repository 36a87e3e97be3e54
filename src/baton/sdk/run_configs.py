"""Run configs: where and how an agent runs a flow's runs. Each converts to the stored ``RunConfig``.

Usage::

    from baton import DockerRun, flow

    @flow(run_config=DockerRun(image="python:3.11-slim", labels=["docker"]))
    def etl() -> None: ...

Labels on a run config route the flow's runs (DESIGN.md §4): a run takes explicit labels, else its flow's
run-config labels, else the flow's labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from baton.labels import normalize_labels
from baton.schemas.core import RunConfig, RunConfigType


class BaseRun:
    """Converts a run config dataclass to the stored model; its field names are the model's."""

    type: ClassVar[RunConfigType]

    def to_schema(self) -> RunConfig:
        """The run config as the API stores it (labels validated, sorted and de-duplicated)."""
        values: dict[str, Any] = {}
        for item in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, item.name)
            if value is None:
                continue  # not given: the stored model's default
            if item.name == "labels":
                value = normalize_labels(value)
            elif item.name == "env":
                value = {str(key): str(val) for key, val in value.items()}
            elif isinstance(value, (list, tuple)):
                value = list(value)
            values[item.name] = value
        return RunConfig(type=self.type, **values)


@dataclass
class UniversalRun(BaseRun):
    """Any agent may run it, with its own defaults."""

    type: ClassVar[RunConfigType] = RunConfigType.UNIVERSAL
    env: Mapping[str, str] | None = None
    labels: Iterable[str] | None = None


@dataclass
class LocalRun(BaseRun):
    """Run as a process on the local agent's host, optionally in ``working_dir``, optionally as OS ``user``.

    ``user`` is honoured only by an agent started with ``--allow-run-as USER``; any other agent fails the run.
    """

    type: ClassVar[RunConfigType] = RunConfigType.LOCAL
    env: Mapping[str, str] | None = None
    working_dir: str | None = None
    labels: Iterable[str] | None = None
    user: str | None = None


@dataclass
class DockerRun(BaseRun):
    """Run in a container of ``image`` (default: the agent's), with ``ports`` and Docker ``host_config``.

    ``host_config`` takes docker-py's ``create_host_config`` arguments (``mem_limit="1g"``). The Docker agent allows
    only resource limits by default: anything else (``privileged``, binds, devices, ``network_mode``, ``ports``...)
    fails the run unless the agent was started with the ``--allow-...`` flag its message names.
    """

    type: ClassVar[RunConfigType] = RunConfigType.DOCKER
    image: str | None = None
    env: Mapping[str, str] | None = None
    labels: Iterable[str] | None = None
    ports: list[int] | None = None
    host_config: dict[str, Any] | None = None


@dataclass
class KubernetesRun(BaseRun):
    """Run as a Kubernetes Job, from ``job_template`` (a dict) or the agent's template."""

    type: ClassVar[RunConfigType] = RunConfigType.KUBERNETES
    job_template: dict[str, Any] | None = None
    image: str | None = None
    env: Mapping[str, str] | None = None
    labels: Iterable[str] | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[str] | None = None
    image_pull_policy: str | None = None
