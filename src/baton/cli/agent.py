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
from baton.agent.option_specs import DOCKER_OPTIONS, KUBERNETES_OPTIONS, LOCAL_OPTIONS, Kind, OptionSpec
from baton.cli.agent_options import CommonAgentOptions, common_agent_options, with_options
from baton.cli.context import CliState, pass_state
from baton.cli.output import InputError
from baton.exceptions import ConfigurationError
from baton.exits import shut_down_cleanly

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


@agent.group("start", invoke_without_command=True)
@common_agent_options
@click.pass_context
@pass_state
def start_default(state: CliState, ctx: click.Context, /, **params: Any) -> None:
    """Start an agent of the type in settings (agent.type; $BATON__AGENT__TYPE), local by default; or of the type
    named, as in `baton agent start kubernetes --namespace flows` (the same as `baton agent kubernetes start`)."""
    if ctx.invoked_subcommand is not None:
        early = [name for name, value in params.items() if value not in (None, False, ())]
        if early:
            raise InputError(f"put the options after the agent type: baton agent start {ctx.invoked_subcommand} ...")
        return
    common = CommonAgentOptions.pop_from(params, state)
    common.warn_about_key()
    settings = common.settings(state)
    cls = agent_class(settings.agent.type)
    cls(settings=settings, **common.agent_kwargs()).start()
    shut_down_cleanly()


@agent.group()
def local() -> None:
    """The local agent: runs flows as processes on this machine."""


def _local_options(func: Any) -> Any:
    """The COMMON options, then the local agent's own (both from ``baton.agent.option_specs``)."""
    return common_agent_options(with_options(LOCAL_OPTIONS)(func))


def _own(specs: tuple[OptionSpec, ...], params: dict[str, Any]) -> dict[str, Any]:
    """A type's own options as agent keyword arguments (a repeatable option given no times: None, not given)."""
    return {
        spec.name: (list(params.pop(spec.name)) or None) if spec.kind is Kind.MULTIPLE else params.pop(spec.name)
        for spec in specs
    }


@local.command("start")
@_local_options
@pass_state
def start_local(state: CliState, /, **params: Any) -> None:
    """Start a local agent."""
    common = CommonAgentOptions.pop_from(params, state)
    common.warn_about_key()
    own = _own(LOCAL_OPTIONS, params)
    settings = common.settings(state, LOCAL_OPTIONS, **own)
    from baton.agent.local import LocalAgent

    LocalAgent(settings=settings, **common.agent_kwargs(), **own).start()
    shut_down_cleanly()


@local.command("install")
@_local_options
@pass_state
def install_local(state: CliState, /, **params: Any) -> None:
    """Print a supervisord config that runs a local agent with these options.

    Save it and run `supervisord -c FILE`; it holds the key, so keep it private (chmod 600).
    """
    common = CommonAgentOptions.pop_from(params, state)
    own = _own(LOCAL_OPTIONS, params)
    from baton.agent.install import render_supervisord_config

    values = common.agent_kwargs()
    key, env = values.pop("key"), values.pop("env")
    try:
        config = render_supervisord_config(key=key, env=env, **values, **own)
    except ConfigurationError as exc:
        raise InputError(str(exc)) from exc
    click.echo(config, nl=False)


@agent.group()
def docker() -> None:
    """The Docker agent: runs each flow run in its own container on a Docker engine."""


def _docker_options(func: Any) -> Any:
    """The COMMON options, then the Docker agent's own and its policy's (the seed's `prefect agent docker start`)."""
    for option in reversed(_policy_options()):
        func = option(func)
    return common_agent_options(with_options(DOCKER_OPTIONS)(func))


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
    own = _own(DOCKER_OPTIONS, params)
    own.pop("no_docker_interface")  # deprecated, does nothing: its option callback has warned
    own["no_pull"] = bool(own["no_pull"])
    common.warn_about_key()
    settings = common.settings(state, DOCKER_OPTIONS, **own)
    cls = agent_class("docker")
    cls(settings=settings, policy=policy, **common.agent_kwargs(), **own).start()
    shut_down_cleanly()


@agent.group()
def kubernetes() -> None:
    """The Kubernetes agent: runs each flow run as a Job on a Kubernetes cluster."""


def _kubernetes_options(func: Any) -> Any:
    """The COMMON options, then the Kubernetes agent's own."""
    return common_agent_options(with_options(KUBERNETES_OPTIONS)(func))


def _kubernetes_own(params: dict[str, Any]) -> dict[str, Any]:
    own = _own(KUBERNETES_OPTIONS, params)
    secrets = own.pop("image_pull_secrets")
    own["image_pull_secrets"] = [name.strip() for name in secrets.split(",") if name.strip()] if secrets else None
    return own


@kubernetes.command("start")
@_kubernetes_options
@pass_state
def start_kubernetes(state: CliState, /, **params: Any) -> None:
    """Start a Kubernetes agent: each flow run becomes a Job in --namespace, its run token in a Secret the Job owns.

    A run config's job_template may ask no more than a baseline pod (no host namespaces, hostPath, privileged,
    added capabilities, other Secrets...) unless --allow-pod-option allows it; the agent's own --job-template is
    trusted.
    """
    common = CommonAgentOptions.pop_from(params, state)
    own = _kubernetes_own(params)
    common.warn_about_key()
    settings = common.settings(state)
    cls = agent_class("kubernetes")
    cls(settings=settings, **common.agent_kwargs(), **own).start()
    shut_down_cleanly()


@kubernetes.command("install")
@_kubernetes_options
@click.option("--rbac", is_flag=True, help="Also print a ServiceAccount, Role (least privilege) and RoleBinding.")
@click.option("--agent-image", metavar="IMAGE", help="The agent's own image. Default: baton:<version>.")
@pass_state
def install_kubernetes(state: CliState, /, rbac: bool, agent_image: str | None, **params: Any) -> None:
    """Print the YAML that runs a Kubernetes agent in the cluster: kubectl apply -f FILE.

    The key (and --env values) go into a Secret; keep the output private.
    """
    common = CommonAgentOptions.pop_from(params, state)
    own = _kubernetes_own(params)
    from baton.agent.install.kubernetes import render_kubernetes_install

    values = {**common.agent_kwargs(), **own}
    key, env = values.pop("key"), values.pop("env")
    key_file = values.pop("key_file")
    try:
        if key is None and key_file is not None:
            from baton.agent.options import read_key_file

            key = read_key_file(key_file)
        namespace = values.pop("namespace") or "default"
        values["image_pull_secrets"] = ",".join(values["image_pull_secrets"] or []) or None
        text = render_kubernetes_install(
            key=key, namespace=namespace, rbac=rbac, image=agent_image, env=env, values=values
        )
    except ConfigurationError as exc:
        raise InputError(str(exc)) from exc
    click.echo(text, nl=False)


# The seed's word order: `baton agent start kubernetes`, `baton agent install kubernetes`.
@agent.group("install")
def install_group() -> None:
    """Print what installs an agent as a service: `baton agent install local|kubernetes`."""


install_group.add_command(install_local, "local")
install_group.add_command(install_kubernetes, "kubernetes")
start_default.add_command(start_local, "local")
start_default.add_command(start_docker, "docker")
start_default.add_command(start_kubernetes, "kubernetes")
