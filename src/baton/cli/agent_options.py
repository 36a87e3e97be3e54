"""The options every ``baton agent <type> start|install`` command shares (DESIGN.md §6, COMMON).

Usage::

    @local.command()
    @common_agent_options
    @click.option("-p", "--import-path", "import_paths", multiple=True)
    @pass_state
    def start(state: CliState, **params: Any) -> None:
        common = CommonAgentOptions.pop_from(params, state)
        LocalAgent(settings=common.settings(state), **common.agent_kwargs(), import_paths=...).start()

Options left out stay ``None`` (or False for flags) so that the environment, then config.toml, then the
defaults apply; the settings passed to the agent carry the same values as its explicit arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from baton.agent.option_specs import COMMON_OPTIONS, Kind, OptionSpec, names, settings_overrides
from baton.cli.context import CliState
from baton.cli.output import LOG_LEVELS, InputError, parse_env, parse_labels
from baton.settings import BatonSettings

F = TypeVar("F", bound=Callable[..., Any])

_KEY_ON_COMMAND_LINE_WARNING = (
    "Warning: a key given with -k/--key is on the agent's command line, which every user of this host can read "
    "(ps, /proc/PID/cmdline): use --key-file PATH (mode 0600) or $BATON__API__KEY instead."
)


def _warn_deprecated(warning: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value:
            click.echo(warning, err=True)
        return value

    return callback


def click_option(spec: OptionSpec) -> Callable[[F], F]:
    """The click option of ``spec``: flags, help, type and default, all from the spec."""
    extra: dict[str, Any] = {"help": spec.help}
    if spec.metavar:
        extra["metavar"] = spec.metavar
    if spec.deprecated:
        extra["callback"] = _warn_deprecated(spec.deprecated)
    decls: list[str] = [*spec.flags, spec.name]
    if spec.kind is Kind.FLAG:
        extra.update(is_flag=True, default=None)  # None: left out, so the settings decide
    elif spec.kind is Kind.TOGGLE:
        long = spec.flag.removeprefix("--")
        decls = [f"--{long}/--no-{long}", spec.name]
        extra["default"] = None
    elif spec.kind is Kind.MULTIPLE:
        extra["multiple"] = True
    elif spec.name == "log_level":
        extra["type"] = LOG_LEVELS
    elif spec.type is int:
        low = None if spec.minimum is None else int(spec.minimum)
        high = None if spec.maximum is None else int(spec.maximum)
        extra["type"] = click.IntRange(min=low, max=high)
    elif spec.type is float:
        extra["type"] = click.FloatRange(min=spec.minimum, max=spec.maximum)
    return click.option(*decls, **extra)


def with_options(specs: Sequence[OptionSpec]) -> Callable[[F], F]:
    """A decorator adding ``specs``' click options to a command, in their order in ``--help``."""

    def decorate(func: F) -> F:
        for spec in reversed(specs):
            func = click_option(spec)(func)
        return func

    return decorate


def common_agent_options(func: F) -> F:
    """Add the COMMON agent options to a command, in the order of ``--help`` in DESIGN.md §6."""
    return with_options(COMMON_OPTIONS)(func)


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
    allow_executor: list[str] | None
    max_executor_processes: int | None

    @classmethod
    def pop_from(cls, params: dict[str, Any], state: CliState) -> CommonAgentOptions:
        """Take the COMMON options out of a command's ``params``; what is left is the type's own options.

        ``-a``/``-k`` given to the root group (``baton -a URL agent local start``) apply when the command's
        own are left out.

        Raises:
            InputError: a label or an ``--env`` value is malformed, or both a key and a key file are given.
        """
        values = {name: params.pop(name) for name in names(COMMON_OPTIONS)}
        token = values.pop("token")
        values["key"] = values["key"] or token or state.key
        if values["key"] and values["key_file"]:
            raise InputError("give -k/--key or --key-file, not both")
        values["api"] = values["api"] or state.api
        values["no_cloud_logs"] = bool(values["no_cloud_logs"])
        values["labels"] = parse_labels(values["labels"])
        values["env"] = parse_env(values["env"]) if values["env"] else None
        values["log_level"] = values["log_level"].upper() if values["log_level"] else None
        values["allow_executor"] = list(values["allow_executor"]) or None  # given no times: the settings decide
        return cls(**values)

    def warn_about_key(self) -> None:
        """A started agent with ``-k``: its key shows in ``ps`` for as long as it runs, so say so on stderr."""
        if self.key:
            click.echo(_KEY_ON_COMMAND_LINE_WARNING, err=True)

    def settings(self, state: CliState, specs: Sequence[OptionSpec] = (), **values: Any) -> BatonSettings:
        """The agent's settings: these options (and the type's own ``values`` of ``specs``) over env and file."""
        sections = settings_overrides([*COMMON_OPTIONS, *specs], {**self.agent_kwargs(), **values})
        return state.settings(**sections)

    def agent_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every agent class takes for these options (the fields are AgentOptions' keys)."""
        return dataclasses.asdict(self)
