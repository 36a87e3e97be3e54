"""Core enums and value objects shared by actions and responses."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(StrEnum):
    """What a key may do inside its tenant (DESIGN.md §2)."""

    ADMIN = "admin"  # everything
    USER = "user"  # register flows, create/cancel runs, read
    RUNNER = "runner"  # agents: register, claim, report deployments and states of runs it claimed
    READ = "read"


class StorageType(StrEnum):
    API = "api"  # the server keeps the flow's source; any agent anywhere can run it
    LOCAL = "local"  # a path on the agent's host; adds the hostname label
    DOCKER = "docker"  # the source is inside an image
    GIT = "git"


class RunConfigType(StrEnum):
    LOCAL = "local"
    UNIVERSAL = "universal"
    DOCKER = "docker"
    KUBERNETES = "kubernetes"


class StrictModel(BaseModel):
    """Input models refuse unknown fields, so a typo is a 422, not a silently ignored option."""

    model_config = ConfigDict(extra="forbid")


class Storage(StrictModel):
    type: StorageType = StorageType.API
    # local: absolute path of the flow file on the agent's host; docker: path inside the image.
    path: str | None = Field(default=None, max_length=4096)
    image: str | None = Field(default=None, max_length=1024)
    repo: str | None = Field(default=None, max_length=4096)
    ref: str | None = Field(default=None, max_length=512)


class RunConfig(StrictModel):
    """A run config as stored: the fields of every kind; each agent reads the ones of its kind."""

    type: RunConfigType = RunConfigType.UNIVERSAL
    env: dict[str, str] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    # LocalRun
    working_dir: str | None = None
    # DockerRun / KubernetesRun
    image: str | None = None
    ports: list[int] = Field(default_factory=list)
    host_config: dict[str, Any] = Field(default_factory=dict)
    job_template: dict[str, Any] | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    image_pull_policy: str | None = None
