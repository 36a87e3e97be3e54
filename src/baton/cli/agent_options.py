"""The options every ``baton agent <type> start|install`` command shares (DESIGN.md §6, COMMON).

Usage::

    @local.command()
    @common_agent_options
    @click.option("-p", "--import-path", "import_paths", multiple=True)
    @pass_state
    def start(state: CliState, **params: Any) -> None:
        common = CommonAgentOptions.pop_from(params, state)
        LocalAgent(**common.agent_kwargs(), import_paths=...).start()

Options left out stay ``None`` (or False for flags) so that the environment, then config.toml, then the
defaults apply; the settings passed to the agent carry the same values as its explicit arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from baton.cli.context import CliState
from baton.cli.output import LOG_LEVELS, InputError, parse_env, parse_labels
from baton.schemas.core import MAX_TIMEOUT_SECONDS
from baton.settings import BatonSettings

F = TypeVar("F", bound=Callable[..., Any])

_DEPRECATED_T_WARNING = "Warning: -t/--token is deprecated; use -k/--key instead."
_KEY_ON_COMMAND_LINE_WARNING = (
    "Warning: a key given with -k/--key is on the agent's command line, which every user of this host can read "
    "(ps, /proc/PID/cmdline): use --key-file PATH (mode 0600) or $BATON__API__KEY instead."
)


def _warn_token(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        click.echo(_DEPRECATED_T_WARNING, err=True)
    return value


_COMMON_OPTIONS = (
    click.option(
        "-k",
        "--key",
        help="A runner API key (visible in ps: prefer --key-file). Default: $BATON__API__KEY, then config.toml.",
    ),
    click.option(
        "--key-file",
        metavar="PATH",
        help="Read the API key from this file, which only its owner may read (chmod 600). "
        "Default: $BATON__API__KEY_FILE.",
    ),
    click.option(
        "--tenant-id",
        help="The tenant (id or name) the agent must connect to: it refuses to start with a key of another "
        "tenant. Default: the tenant of the key (from /api/whoami).",
    ),
    click.option("-a", "--api", help="The API URL. Default: $BATON__API__URL, then config.toml."),
    click.option("--agent-config-id", help="An agent config id to link this agent instance with."),
    click.option("-n", "--name", help="A name for the agent. Default: from settings, else generated."),
    click.option(
        "-l",
        "--label",
        "labels",
        multiple=True,
        metavar="LABEL",
        help="A label the agent uses to pick flow runs (repeatable). Default: $BATON__AGENT__LABELS.",
    ),
    click.option(
        "-e",
        "--env",
        "env",
        multiple=True,
        metavar="KEY=VALUE",
        help="An environment variable set on each flow run (repeatable).",
    ),
    click.option(
        "--max-polls",
        type=click.IntRange(min=0),
        help="Poll the API at most this many times, then stop. Default: no limit.",
    ),
    click.option(
        "--agent-address",
        metavar="URL",
        help="Serve the health check (/api/health, /api/poke, /metrics) here, e.g. http://127.0.0.1:8080.",
    ),
    click.option(
        "--no-cloud-logs",
        is_flag=True,
        default=False,
        help="Do not send the logs of flow runs to the API. Default: from settings.",
    ),
    click.option("--log-level", type=LOG_LEVELS, help="The agent's log level. Default: from settings."),
    click.option(
        "-t",
        "--token",
        callback=_warn_token,
        help="DEPRECATED: an alias of -k/--key.",
    ),
    click.option(
        "--limit",
        type=click.IntRange(min=1),
        help="The most flow runs this agent deploys at once. Default: no limit.",
    ),
    click.option(
        "--run-timeout",
        "run_timeout_seconds",
        type=click.IntRange(min=1, max=MAX_TIMEOUT_SECONDS),
        metavar="SECONDS",
        help="Kill a flow run still going after this long and fail it (a flow's shorter timeout_seconds wins). "
        "Default: no limit.",
    ),
)
_COMMON_NAMES = (
    "key",
    "key_file",
    "tenant_id",
    "api",
    "agent_config_id",
    "name",
    "labels",
    "env",
    "max_polls",
    "agent_address",
    "no_cloud_logs",
    "log_level",
    "token",
    "limit",
    "run_timeout_seconds",
)


def common_agent_options(func: F) -> F:
    """Add the COMMON agent options to a command, in the order of ``--help`` in DESIGN.md §6."""
    for option in reversed(_COMMON_OPTIONS):
        func = option(func)
    return func


@dataclass(frozen=True)
class CommonAgentOptions:
    """The COMMON options, validated: labels checked and sorted, ``--env`` parsed, ``-t`` folded into key."""

    key: str | None
    key_file: str | None
    tenant_id: str | None
    api: str | None
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

    @classmethod
    def pop_from(cls, params: dict[str, Any], state: CliState) -> CommonAgentOptions:
        """Take the COMMON options out of a command's ``params``; what is left is the type's own options.

        ``-a``/``-k`` given to the root group (``baton -a URL agent local start``) apply when the command's
        own are left out.

        Raises:
            InputError: a label or an ``--env`` value is malformed, or both a key and a key file are given.
        """
        values = {name: params.pop(name) for name in _COMMON_NAMES}
        token = values.pop("token")
        values["key"] = values["key"] or token or state.key
        if values["key"] and values["key_file"]:
            raise InputError("give -k/--key or --key-file, not both")
        values["api"] = values["api"] or state.api
        values["labels"] = parse_labels(values["labels"])
        values["env"] = parse_env(values["env"]) if values["env"] else None
        values["log_level"] = values["log_level"].upper() if values["log_level"] else None
        return cls(**values)

    def warn_about_key(self) -> None:
        """A started agent with ``-k``: its key shows in ``ps`` for as long as it runs, so say so on stderr."""
        if self.key:
            click.echo(_KEY_ON_COMMAND_LINE_WARNING, err=True)

    def settings(self, state: CliState, **agent_overrides: Any) -> BatonSettings:
        """The agent's settings: these options (and the type's ``agent_overrides``) over env and file."""
        agent = {
            "name": self.name,
            "labels": self.labels,
            "env": self.env,
            "agent_config_id": self.agent_config_id,
            "agent_address": self.agent_address,
            "max_polls": self.max_polls,
            "limit": self.limit,
            "run_timeout_seconds": self.run_timeout_seconds,
            **agent_overrides,
        }
        return state.settings(
            api={"url": self.api, "key": self.key, "key_file": self.key_file, "tenant_id": self.tenant_id},
            agent=agent,
            logging={"level": self.log_level, "send_to_api": False if self.no_cloud_logs else None},
        )

    def agent_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every agent class takes for these options (the fields are AgentOptions' keys)."""
        return dataclasses.asdict(self)
