"""``baton agent``: start agents, and print the configs that install them as services.

Usage::

    baton agent start                                   # the type in settings (agent.type), default local
    baton agent local start -l dev -l staging -e STAGE=dev --agent-address http://127.0.0.1:8080
    baton agent local install -k bat_... -l dev > /etc/supervisor/conf.d/baton-agent.conf
    baton agent docker start --network host --allow-host-config privileged --allow-bind /srv/shared
"""

from __future__ import annotations

import importlib
from typing import Any, cast

import click

from baton.agent.docker_policy import DockerPolicy, flag_of
from baton.cli.agent_options import CommonAgentOptions, common_agent_options
from baton.cli.context import CliState, pass_state
from baton.cli.output import InputError
from baton.exceptions import ConfigurationError

# settings.agent.type -> the class in baton.agent that runs it
AGENT_CLASSES = {"local": "LocalAgent", "docker": "DockerAgent", "kubernetes": "KubernetesAgent"}


def agent_class(agent_type: str) -> Any:
    """The agent class for ``agent_type``, imported only now (docker and kubernetes need extra packages).

    Raises:
        ConfigurationError: the type is unknown or its agent cannot be imported here.
    """
    class_name = AGENT_CLASSES.get(agent_type)
    if class_name is None:
        raise ConfigurationError(f"unknown agent type {agent_type!r}; use one of {', '.join(AGENT_CLASSES)}")
    try:
        return getattr(importlib.import_module("baton.agent"), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"the {agent_type} agent is not available here: {exc}") from exc


@click.group()
def agent() -> None:
    """Start agents: they claim flow runs from the API and deploy them on your infrastructure."""


@agent.command("start")
@common_agent_options
@pass_state
def start_default(state: CliState, /, **params: Any) -> None:
    """Start an agent of the type in settings (agent.type; $BATON__AGENT__TYPE), local by default."""
    common = CommonAgentOptions.pop_from(params, state)
    common.warn_about_key()
    settings = common.settings(state)
    cls = agent_class(settings.agent.type)
    cls(settings=settings, **common.agent_kwargs()).start()


@agent.group()
def local() -> None:
    """The local agent: runs flows as processes on this machine."""


def _local_options(func: Any) -> Any:
    """The local agent's own options, after the COMMON ones."""
    func = click.option(
        "--allow-run-as",
        "allow_run_as",
        multiple=True,
        metavar="USER",
        help="An OS user a flow's LocalRun(user=...) may ask to run as (repeatable). Needs root.",
    )(func)
    func = click.option(
        "--run-as",
        metavar="USER",
        default=None,
        help="Run flows as this OS user, who must not be able to read the agent's key or config. Needs root. "
        "Default: the agent's own user.",
    )(func)
    func = click.option(
        "--hostname-label/--no-hostname-label",
        default=None,
        help="Add this host's name to the agent's labels. Default: from settings (yes).",
    )(func)
    func = click.option(
        "-f",
        "--show-flow-logs",
        is_flag=True,
        default=None,
        help="Show the output of the flow runs in the agent's output.",
    )(func)
    func = click.option(
        "-p",
        "--import-path",
        "import_paths",
        multiple=True,
        metavar="PATH",
        help="A path added to PYTHONPATH of every flow run (repeatable).",
    )(func)
    return common_agent_options(func)


def _local_extras(params: dict[str, Any]) -> dict[str, Any]:
    """The local agent's options as agent keyword arguments and settings (None: not given)."""
    return {
        "import_paths": list(params["import_paths"]) or None,
        "show_flow_logs": params["show_flow_logs"],
        "hostname_label": params["hostname_label"],
        "run_as": params["run_as"],
        "allow_run_as": list(params["allow_run_as"]) or None,
    }


@local.command("start")
@_local_options
@pass_state
def start_local(state: CliState, /, **params: Any) -> None:
    """Start a local agent."""
    common = CommonAgentOptions.pop_from(params, state)
    common.warn_about_key()
    extras = _local_extras(params)
    settings = common.settings(state, **extras)
    from baton.agent.local import LocalAgent

    LocalAgent(settings=settings, **common.agent_kwargs(), **extras).start()


@local.command("install")
@_local_options
@pass_state
def install_local(state: CliState, /, **params: Any) -> None:
    """Print a supervisord config that runs a local agent with these options.

    Save it and run `supervisord -c FILE`; it holds the key, so keep it private (chmod 600).
    """
    common = CommonAgentOptions.pop_from(params, state)
    if common.max_polls is not None:
        raise InputError("--max-polls does not fit an installed agent: supervisord would restart it")
    from baton.agent.install import render_supervisord_config

    config = render_supervisord_config(
        key=common.key,
        key_file=common.key_file,
        run_timeout_seconds=common.run_timeout_seconds,
        run_as=params["run_as"],
        allow_run_as=params["allow_run_as"],
        api=common.api,
        tenant_id=common.tenant_id,
        agent_config_id=common.agent_config_id,
        name=common.name,
        labels=common.labels or [],
        env=common.env,
        import_paths=params["import_paths"],
        agent_address=common.agent_address,
        log_level=common.log_level,
        limit=common.limit,
        no_cloud_logs=common.no_cloud_logs,
        show_flow_logs=bool(params["show_flow_logs"]),
        hostname_label=params["hostname_label"] is not False,
    )
    click.echo(config, nl=False)


@agent.group()
def docker() -> None:
    """The Docker agent: runs each flow run in its own container on a Docker engine."""


def _docker_options(func: Any) -> Any:
    """The Docker agent's own options (the seed's `prefect agent docker start`), after the COMMON ones."""
    options = [
        click.option("-b", "--base-url", default=None, help="Docker daemon URL. Default: from the environment."),
        click.option("--no-pull", is_flag=True, help="Never pull images: use only images present locally."),
        click.option(
            "-f",
            "--show-flow-logs",
            is_flag=True,
            default=None,
            help="Show the containers' output in the agent's output, prefixed by run name.",
        ),
        click.option(
            "--volume",
            "volumes",
            multiple=True,
            metavar="HOST:CONTAINER[:ro|rw]",
            help="A volume for every flow container (repeatable); a name instead of a host path is a named volume, "
            "a bare /container/path an anonymous one.",
        ),
        click.option(
            "--network",
            "networks",
            multiple=True,
            metavar="NETWORK",
            help="A Docker network for every flow container (repeatable); the first one at creation.",
        ),
        click.option(
            "--docker-client-timeout",
            type=click.IntRange(min=1),
            default=None,
            help="Timeout of Docker API calls in seconds (default 60).",
        ),
        click.option(
            "--no-docker-interface",
            is_flag=True,
            help="Deprecated, does nothing: accepted so that Prefect 1 command lines keep working.",
        ),
    ]
    for option in reversed([*options, *_policy_options()]):
        func = option(func)
    return common_agent_options(func)


def _policy_options() -> list[Any]:
    """The options of the Docker agent's policy, one per field of DockerPolicy (its name, help and metavar)."""
    options = []
    for name, field in DockerPolicy.model_fields.items():
        if field.annotation is bool:
            options.append(click.option(flag_of(name), name, is_flag=True, default=False, help=field.description))
        else:
            extra = cast(dict[str, Any], field.json_schema_extra)
            help_text = f"{field.description} Repeatable."
            options.append(click.option(flag_of(name), name, multiple=True, metavar=extra["metavar"], help=help_text))
    return options


@docker.command("start")
@_docker_options
@pass_state
def start_docker(state: CliState, /, **params: Any) -> None:
    """Start a Docker agent.

    Run configs get resource limits only (memory, CPU, shm size, ulimits...): anything else they ask of the host
    (privileged, binds, devices, host namespaces, networks, ports, other images when --allow-image is given) fails
    the run, naming the --allow-... option that would allow it.
    """
    common = CommonAgentOptions.pop_from(params, state)
    policy = DockerPolicy.parse({name: params.pop(name) for name in DockerPolicy.model_fields})
    if params.pop("no_docker_interface"):
        click.echo("Warning: --no-docker-interface is deprecated and does nothing (as in Prefect 1.x).", err=True)
    common.warn_about_key()
    settings = common.settings(state)
    cls = agent_class("docker")
    cls(
        settings=settings,
        base_url=params["base_url"],
        no_pull=params["no_pull"],
        show_flow_logs=params["show_flow_logs"],
        volumes=list(params["volumes"]) or None,
        networks=list(params["networks"]) or None,
        docker_client_timeout=params["docker_client_timeout"],
        policy=policy,
        **common.agent_kwargs(),
    ).start()
