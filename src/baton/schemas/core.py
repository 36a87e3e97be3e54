"""Core enums and value objects shared by actions and responses."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator


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


# The longest flow-run timeout (a flow's timeout_seconds, an agent's --run-timeout): a year. Longer is a typo.
MAX_TIMEOUT_SECONDS = 366 * 24 * 3600
# @flow(retries=N): more would only hide a broken flow, and each attempt keeps its history rows.
MAX_FLOW_RETRIES = 100
# The largest concurrency limit (a flow's max_concurrent_runs, `baton limits set LABEL N`): more is a typo.
MAX_CONCURRENT_RUNS = 100_000


class RunConfigType(StrEnum):
    LOCAL = "local"
    UNIVERSAL = "universal"
    DOCKER = "docker"
    KUBERNETES = "kubernetes"


# PostgreSQL cannot store NUL in text columns, and a lone surrogate (JSON "\ud800") cannot be encoded as UTF-8 at all:
# either would pass validation and then fail in the database or in the answer (a 500), so input text refuses both.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_TEXT = "text may not contain NUL characters (\\u0000) or lone surrogates (\\ud800-\\udfff)"

# How deep a JSON value that enters the API may nest (a field's own object or list counts as level 1). Values nested
# some 255 levels deep were stored and then could not be serialised, so every list and claim of the tenant answered
# 500 (issue 8, item 3); 32 is far beyond what parameters, state data or run configs need.
MAX_JSON_DEPTH = 32


def check_storable_text(value: Any) -> None:
    """Raise ValueError if ``value`` cannot be stored and served back as it came.

    That is: a string in it (also inside lists and dicts, keys too) with NUL or a lone surrogate, nesting deeper
    than :data:`MAX_JSON_DEPTH`, or a number that JSON cannot carry (NaN, Infinity: they would come back as null).
    Walks with a stack, not recursion: free-form JSON may nest as deep as the parser allowed.
    """
    problem = json_value_problem(value)
    if problem is not None:
        raise ValueError(problem)


def json_value_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` cannot be stored and served back (see :func:`check_storable_text`), or None."""
    if isinstance(value, str):  # most fields: no walk needed
        return None if _UNSTORABLE.search(value) is None else _UNSTORABLE_TEXT
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return _UNSTORABLE_TEXT
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "numbers must be finite: NaN and Infinity are not JSON"
        elif isinstance(item, dict | list | tuple):
            if depth + 1 > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


class StrictModel(BaseModel):
    """Input models refuse unknown fields, so a typo is a 422, not a silently ignored option, and text that no
    database can store (:func:`check_storable_text`), so that it is a 422 on SQLite and PostgreSQL alike."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        check_storable_text(value)
        return value


class Storage(StrictModel):
    type: StorageType = StorageType.API
    # local: absolute path of the flow file on the agent's host; docker: path inside the image.
    path: str | None = Field(default=None, max_length=4096)
    image: str | None = Field(default=None, max_length=1024)
    repo: str | None = Field(default=None, max_length=4096)
    ref: str | None = Field(default=None, max_length=512)
    # api: the SHA-256 digest of the flow's uploaded bundle (its folder, ``baton.bundles``; PUT /api/bundles/{digest}
    # first); ``path`` is then the flow file's path inside it. None: the flow file travels alone, as ``source``.
    bundle: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


# A run's executor for the tasks its flow submits (issue 14): "sequential", "thread[:N]", "process[:N]", "dask[:N]"
# (a temporary cluster of N workers) or "dask:tcp://host:port" (an existing cluster). Parsed by
# ``baton.sdk.executors.from_spec``; it overrides the flow's ``@flow(executor=...)`` for the run. The address is a
# host name (labels of letters, digits, '_' and '-'), an IPv4 address or a bracketed IPv6 one, and a port, as dask's
# client needs: "dask:tcp://[" or a missing port is a 422 here, not a run that fails when its flow starts.
_DASK_HOST = r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}(\.[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}){0,20})"
EXECUTOR_SPEC = (
    rf"^(sequential|(thread|process|dask)(:[1-9][0-9]{{0,3}})?|dask:(tcp|tls)://{_DASK_HOST}:[1-9][0-9]{{0,4}})$"
)


class RunConfig(StrictModel):
    """A run config as stored: the fields of every kind; each agent reads the ones of its kind."""

    type: RunConfigType = RunConfigType.UNIVERSAL
    env: dict[str, str] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    # LocalRun
    working_dir: str | None = None
    # The OS user to run as; the local agent honours it only for users its operator allows (--allow-run-as).
    user: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
    # DockerRun / KubernetesRun
    image: str | None = None
    ports: list[Annotated[int, Strict()]] = Field(default_factory=list)
    host_config: dict[str, Any] = Field(default_factory=dict)
    job_template: dict[str, Any] | None = None
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    image_pull_policy: str | None = None
    executor: str | None = Field(default=None, max_length=256, pattern=EXECUTOR_SPEC)
