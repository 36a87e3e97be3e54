"""Typed settings, one model per area, built once at the edge (CLI, ``__main__``) and passed in explicitly.

Precedence, highest first: explicit argument (Python or CLI) > ``BATON__SECTION__KEY`` environment variable >
``$BATON_HOME/config.toml`` > default. Nothing here reads the environment at import time: call
:func:`load_settings` where a program starts.

Usage::

    settings = load_settings(agent={"labels": ["dev"]})
    settings.api.url
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from baton.api_urls import split_api_url
from baton.exceptions import ConfigurationError
from baton.schemas.core import MAX_TIMEOUT_SECONDS

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
DEFAULT_API_URL = "http://127.0.0.1:4200"


def baton_home() -> Path:
    """``$BATON_HOME``, default ``~/.baton``: holds config.toml and the default SQLite database."""
    return Path(os.environ.get("BATON_HOME") or Path.home() / ".baton").expanduser()


def config_path() -> Path:
    return baton_home() / "config.toml"


class ApiSettings(BaseModel):
    """How clients (CLI, agents, flow-run processes) reach the API server."""

    url: str = DEFAULT_API_URL
    key: SecretStr | None = None
    # A file holding the key (mode 0600): when set, the key is read from it and replaces any other. Unlike -k, a
    # file keeps the key off the command line, which every user of the host can read (ps, /proc/PID/cmdline).
    key_file: str | None = None
    tenant_id: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        split_api_url(value)
        return value


class ServerSettings(BaseModel):
    """The API server: where it listens, its database and the timings of its background services."""

    host: str = "127.0.0.1"
    port: int = Field(default=4200, ge=0, le=65535)
    database_url: str | None = None  # None: sqlite in $BATON_HOME
    database_pool_size: int = Field(default=10, ge=1)
    # A claimed run that is not Submitted within its lease goes back to Scheduled (DESIGN.md §3).
    claim_lease_seconds: float = Field(default=30.0, gt=0)
    max_lease_returns: int = Field(default=3, ge=0)
    # Longest a claim call may wait, whatever the agent asks for: bounds how long a request holds a slot.
    max_claim_wait_seconds: float = Field(default=30.0, ge=0)
    services_interval_seconds: float = Field(default=1.0, gt=0)
    # A waiting claim looks again this often even if nothing woke it: runs made due by the clock, and runs written
    # by another replica when its wake-up was lost (PostgreSQL NOTIFY usually wakes it at once).
    claim_recheck_seconds: float = Field(default=2.0, gt=0)
    # Longest a flow-run process's Running, asked while its run is still Pending, waits for its agent's Submitted
    # (``Prefer: wait=N``, RFC 7240), whatever it asks for; 0 refuses at once (409), as servers before issue 12 did.
    max_state_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # Requests handled at once (agents' waiting claims aside), and the bytes of the bodies among them (declared
    # sizes); more wait their turn. These bound the server's memory under many large requests (bench/memory.py).
    max_requests_in_flight: int = Field(default=8, ge=1)
    max_body_bytes_in_flight: int = Field(default=40 * 1024 * 1024, gt=0)
    # A request holding one of the slots above must have sent its whole body within this long (408 after): slow
    # uploads from a valid credential (a flow's run token, say) cannot hold every slot.
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    # How long an idle keep-alive connection stays open. Agents and flow runs use theirs every 5 s (heartbeats):
    # uvicorn's own 5 s made their requests race the server's close (a request sent as the close crossed it was
    # lost, a ConnectionLost); their client drops connections idle for 15 s (baton.client.transport) before this.
    keep_alive_seconds: int = Field(default=20, ge=1, le=300)
    # Recovery (docs/design.md §7): a deployed run is lost when neither its flow-run process nor its agent has
    # vouched for it (heartbeats) for this long.
    run_heartbeat_timeout_seconds: float = Field(default=30.0, gt=0)
    # After the server starts or its database comes back, the lease and recovery services wait one timeout plus
    # this before judging silence: an agent backed off during the outage may take its longest pause (30 s) to call.
    outage_grace_margin_seconds: float = Field(default=30.0, ge=0)
    # Lost Running runs are Failed by default (user code may have had effects); true puts them back in the queue.
    reschedule_lost_runs: bool = False
    # Failed authentications allowed per client address within the window; beyond it, 429 until it slides by.
    failed_auth_limit: int = Field(default=20, ge=1)
    failed_auth_window_seconds: float = Field(default=60.0, gt=0)
    # The per-run log quota (issue 8, items 7 and 8): lines past either bound are not stored but counted, one
    # stored marker line says how many were dropped and why, and so does the run's final state message.
    max_log_lines_per_run: int = Field(default=1_000_000, ge=1)
    max_log_bytes_per_run: int = Field(default=100 * 1024 * 1024, ge=1)
    # Logs are still taken this long after a run ended (its process may flush its last lines after another party
    # set the final state); later writes are refused with 409.
    log_grace_seconds: float = Field(default=60.0, ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto the server believes (IPs or CIDRs; "*" for any). None by
    # default: the failed-auth limit keys on the real peer, so no client can pick the address it is counted as.
    forwarded_allow_ips: list[str] = Field(default_factory=list)
    # A list answer stops adding items past this many (estimated) bytes, and gives a cursor for the rest.
    max_list_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Bounds on what lists hold: task runs per flow run (a run token creates them) and agents per tenant.
    max_task_runs_per_run: int = Field(default=10_000, ge=1)
    max_agents_per_tenant: int = Field(default=1000, ge=1)
    # An agent unseen for this long is stale: `baton agents list` shows it so, `explain` leaves it out of the live
    # agents, notification rules `--on agent-lost` fire for it, and `baton agents prune` may delete it.
    agent_stale_seconds: float = Field(default=90.0, gt=0)
    # Notifications (docs/design.md, Notifications). The server POSTs to user-supplied URLs, so by default it
    # refuses any that resolve to loopback, private, link-local (cloud metadata), multicast or unspecified addresses
    # (SSRF). Entries here (IPs, CIDRs, or exact host names) let an operator permit internal receivers.
    notify_allow_hosts: list[str] = Field(default_factory=list)
    # A delivery is tried this many times, waiting backoff * 2**(n-1) (at most notify_max_backoff_seconds) after
    # the n-th failure: by default 10, 20, 40, 80 s, about 2.5 minutes in all, then given up.
    notify_max_attempts: int = Field(default=5, ge=1, le=20)
    notify_backoff_seconds: float = Field(default=10.0, gt=0)
    notify_max_backoff_seconds: float = Field(default=300.0, gt=0)
    # Each POST must finish (connect, send, answer) within this long: a slow receiver cannot hold the sender.
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Bounds on what notifications store: rules per tenant (409 past it), and how long finished deliveries are
    # kept (they, and late/agent-lost events older than this, are pruned).
    notify_max_rules_per_tenant: int = Field(default=100, ge=1)
    notify_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)

    @field_validator("notify_allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: list[str]) -> list[str]:
        import ipaddress
        import re

        cleaned = []
        for raw in value:
            entry = raw.strip().lower()
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?", entry):
                    raise ValueError(f"notify_allow_hosts: {raw!r} is neither an IP, a CIDR nor a host name") from None
            cleaned.append(entry)
        return cleaned

    # A claimable run due this long ago and still unclaimed is late (`runs list --late`, `explain`): a few seconds
    # of slack, so that a run claimed within an agent's normal poll is never called late.
    late_after_seconds: float = Field(default=5.0, ge=0, le=366 * 24 * 3600)
    # Schedules (docs/design.md, Schedules): the scheduler runs this often, and creates each clock's runs this far
    # ahead (so agents' prefetch sees them and a restart shorter than this skips nothing), at most this many per
    # clock and pass. Times older than the catch-up window are never created on their own (use a backfill); a
    # backfill creates at most scheduler_max_backfill_runs runs per request.
    scheduler_interval_seconds: float = Field(default=5.0, gt=0)
    scheduler_horizon_seconds: float = Field(default=3600.0, ge=0, le=31 * 24 * 3600)
    scheduler_catchup_seconds: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    scheduler_max_runs_per_clock: int = Field(default=100, ge=1, le=10_000)
    scheduler_max_backfill_runs: int = Field(default=10_000, ge=1, le=1_000_000)
    # The web UI (docs/design.md, Web UI): a signed-in browser's session ends after this long without a request,
    # and at the latest this long after sign-in, whatever its use; its key's revocation ends it at once.
    ui_session_idle_seconds: float = Field(default=2 * 3600.0, ge=60, le=30 * 24 * 3600)
    ui_session_max_seconds: float = Field(default=12 * 3600.0, ge=60, le=90 * 24 * 3600)
    # The address users open the UI at, when a proxy in front rewrites Host (e.g. https://baton.example.org): the
    # UI's writes must come from that origin. None: the request's own Host.
    ui_public_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://[^/\s]+/?$")


class AgentSettings(BaseModel):
    """Agents: identity, routing and the timings of their loops."""

    type: Literal["local", "docker", "kubernetes"] = "local"
    name: str | None = None
    labels: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    agent_config_id: str | None = None
    agent_address: str | None = None
    max_polls: int | None = Field(default=None, ge=0)
    # None: the agent's platform decides (agent/capacity.py); 0: no limit.
    limit: int | None = Field(default=None, ge=0)
    poll_wait_seconds: float = Field(default=20.0, ge=0)
    heartbeat_interval_seconds: float = Field(default=5.0, gt=0)
    # Health turns 503 when the poll loop has not talked to the API for this long.
    health_deadline_seconds: float = Field(default=60.0, gt=0)
    show_flow_logs: bool = False
    hostname_label: bool = True
    import_paths: list[str] = Field(default_factory=list)
    # N failed API calls in a row end the agent with a non-zero exit (STYLE.md principle 3).
    max_consecutive_errors: int = Field(default=30, ge=1)
    # The longest a deployed run may go on before the agent kills it and fails it; a flow's own timeout_seconds
    # applies when shorter. None: no agent-wide limit. Bounded like the flow's (a year).
    run_timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    # Local agent: the OS user flows run as (None: the agent's own), and the users a LocalRun(user=...) may ask for.
    run_as: str | None = None
    allow_run_as: list[str] = Field(default_factory=list)
    # Local agent: fork runs from a warm process with the engine imported (agent/prefork.py), else spawn each.
    prefork: bool = True
    # The executors a run config may ask for (agent/executor_policy.py): fnmatch patterns over the spec, "local"
    # for every one that stays on the run's host; empty: "local". A dask address is refused unless named here.
    allow_executor: list[str] = Field(default_factory=list)
    # The most processes a run config's process:N or dask:N may start; None: 4 per CPU; 0: no limit.
    max_executor_processes: int | None = Field(default=None, ge=0)


class LoggingSettings(BaseModel):
    level: LogLevel = "INFO"
    send_to_api: bool = True
    batch_interval_seconds: float = Field(default=1.0, gt=0)
    # The API's limit per batch: a flow that prints fast waits on the shipper (backpressure), so fewer, fuller
    # batches finish it sooner.
    batch_size: int = Field(default=1000, ge=1)


class EnvValueError(ValueError):
    """An environment variable's value cannot be decoded; the message starts with the variable's name."""


# The sources are merged here rather than by pydantic-settings, whose import cost ~90 ms of CPU (it imports asyncio,
# pydantic's dataclasses and its cloud providers' sources): every CLI call, agent, server and spawned flow run paid
# it (issue 12). The rules are those it applied, tested in tests/test_settings*.py:
# - ``BATON__SECTION__KEY`` (any case) sets ``section.key``; ``BATON__SECTION`` may hold the section as a JSON
#   object, under its own keys' variables; deeper names (``BATON__AGENT__ENV__NAME``) set keys of a dict field.
# - A list, dict or model field takes JSON; a list also takes a comma-separated value, and nothing (``=``) is the
#   empty list. Other fields take the text as it is, for pydantic to convert.
# - Unknown sections and keys are ignored, as in the config file.
_ENV_PREFIX = "baton__"


_CONTAINERS = (list, dict, set, tuple, frozenset)


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types ``annotation`` admits but None: its members when it is a union."""
    import types
    from typing import Union, get_args, get_origin

    if get_origin(annotation) is Union or isinstance(annotation, types.UnionType):
        return tuple(member for member in get_args(annotation) if member is not type(None))
    return (annotation,)


def _is_complex(annotation: Any) -> bool:
    """Whether a field of type ``annotation`` is written as JSON in the environment."""
    from typing import get_origin

    return any(
        get_origin(member) in _CONTAINERS
        or member in _CONTAINERS
        or (isinstance(member, type) and issubclass(member, BaseModel))
        for member in _members(annotation)
    )


def _is_list(annotation: Any) -> bool:
    from typing import get_origin

    return any(get_origin(member) is list or member is list for member in _members(annotation))


def _decode(annotation: Any, raw: str) -> Any:
    """The value of a variable for a field of type ``annotation``.

    Raises:
        ValueError: JSON was needed and the value is not (for a list, nor a comma-separated list).
    """
    import json

    if not _is_complex(annotation):
        return raw
    listed = _is_list(annotation)
    if listed and not raw.strip():
        return []
    try:
        return json.loads(raw)
    except ValueError as exc:
        if listed and not raw.lstrip().startswith("["):
            return [item.strip() for item in raw.split(",") if item.strip()]
        raise ValueError(f"not {'a JSON list or a comma-separated list' if listed else 'valid JSON'} ({exc})") from exc


def _from_environment() -> dict[str, Any]:
    """The settings given by ``BATON__`` variables, as nested dicts.

    Raises:
        EnvValueError: a value cannot be decoded (the message names its variable).
    """
    sections: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for name, raw in sorted(os.environ.items()):  # sorted: the same result whatever the environment's order
        path = name.lower().removeprefix(_ENV_PREFIX).split("__") if name.lower().startswith(_ENV_PREFIX) else []
        if not path or not all(path) or path[0] not in BatonSettings.model_fields:
            continue
        section = BatonSettings.model_fields[path[0]].annotation
        try:
            if len(path) == 1:
                sections[path[0]] = _decode(section, raw)
                continue
            fields = section.model_fields if isinstance(section, type) and issubclass(section, BaseModel) else {}
            if path[1] not in fields:
                continue
            value = _decode(fields[path[1]].annotation, raw) if len(path) == 2 else raw
        except ValueError as exc:
            raise EnvValueError(f"{name.upper()}: {'.'.join(path)}: {exc}") from exc
        node = nested
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return _deep_update(sections, nested)


def _from_config_file() -> dict[str, Any]:
    """``$BATON_HOME/config.toml``, or nothing when there is none.

    Raises:
        ConfigurationError: the file cannot be read, or is not TOML.
    """
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` over it, dicts merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


class BatonSettings(BaseModel):
    """All of Baton's settings. Build with :func:`load_settings`."""

    model_config = ConfigDict(extra="ignore")

    api: ApiSettings = Field(default_factory=ApiSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    def database_url(self) -> str:
        """The configured database URL, or the default SQLite file in $BATON_HOME."""
        if self.server.database_url:
            return self.server.database_url
        return f"sqlite:///{baton_home() / 'baton.db'}"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Explicit arguments left as None mean 'not given': they must not hide env or file values."""
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                cleaned[key] = nested
        elif value is not None:
            cleaned[key] = value
    return cleaned


def load_settings(**overrides: Any) -> BatonSettings:
    """Build the settings once, with explicit overrides per section, e.g. ``load_settings(api={"url": u})``.

    Raises:
        ConfigurationError: the config file or an environment variable is malformed.
    """
    from pydantic import ValidationError

    explicit = _drop_none(overrides)
    try:
        environment = _from_environment()
    except EnvValueError as exc:  # e.g. BATON__AGENT__ENV that is not JSON
        raise ConfigurationError(f"invalid settings: {exc}") from exc
    merged = _deep_update(_deep_update(_from_config_file(), environment), explicit)
    try:
        return BatonSettings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_origin(err['loc'], explicit)}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"invalid settings: {problems}") from exc


def _origin(loc: tuple[int | str, ...], explicit: dict[str, Any]) -> str:
    """Where the invalid value at ``loc`` came from, as a prefix: the variable's name, the config file, or nothing
    (an explicit argument, named by ``loc`` alone). Precedence as in :func:`load_settings`."""
    keys = [str(part) for part in loc]
    node: Any = explicit
    for key in keys[:2]:
        node = node.get(key) if isinstance(node, dict) else None
    if node is not None:
        return ""
    wanted = "BATON__" + "__".join(keys[:2]).upper()
    if any(name.upper() == wanted for name in os.environ):
        return f"{wanted}: "
    return f"{config_path()}: "


def ensure_private_home(home: Path) -> None:
    """Create ``$BATON_HOME`` with mode 0700, or tighten it: it holds keys (config.toml) and the SQLite database."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if home.stat().st_mode & 0o077:
        home.chmod(0o700)


def write_config_values(section: str, values: dict[str, Any]) -> Path:
    """Merge ``values`` into ``[section]`` of config.toml, creating it with mode 0600 (it holds keys)."""
    import tomli_w

    path = config_path()
    ensure_private_home(path.parent)
    current: dict[str, Any] = {}
    if path.exists():
        current = tomllib.loads(path.read_text())
    current.setdefault(section, {}).update(values)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(tomli_w.dumps(current))
    os.chmod(path, 0o600)
    return path
