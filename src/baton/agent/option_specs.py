"""The one declaration of every agent option (DESIGN.md §6): its flags, help, type, the setting it lands in, and
whether an installed agent carries it on its command line, in its environment, or not at all.

Everything else is derived from these lists: the click options of ``baton agent <type> start|install``
(``cli/agent_options.py``), the settings an agent runs with (``base.agent_settings``, the CLI's settings), and
the command line of an installed agent (``install/``). ``tests/agent/test_options.py`` checks that the Python
constructors take exactly these names.

Usage::

    overrides = settings_overrides(COMMON_OPTIONS, {"labels": ["dev"], "api": "http://127.0.0.1:4200"})
    argv = command_line(LOCAL_OPTIONS, {"import_paths": ["/srv/flows"]})   # ["--import-path", "/srv/flows"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from baton.schemas.core import MAX_TIMEOUT_SECONDS


class Kind(StrEnum):
    VALUE = "value"  # --name VALUE
    FLAG = "flag"  # --no-pull (True when given, None when not; False only from Python)
    TOGGLE = "toggle"  # --hostname-label/--no-hostname-label (None when neither is given)
    MULTIPLE = "multiple"  # --label A --label B


class Install(StrEnum):
    """What an installed agent (``baton agent <type> install``) does with an option's value."""

    ARGV = "argv"  # on its command line
    ENVIRONMENT = "environment"  # a secret: in its environment, never on a command line anyone can read
    NO = "no"  # refused or meaningless for a service (--max-polls) or handled by the installer itself


@dataclass(frozen=True)
class OptionSpec:
    """One agent option.

    Args:
        name: the keyword argument (and click parameter) name.
        flags: its command-line flags, the long one last (``("-l", "--label")``).
        help: its ``--help`` text.
        kind: how it is given on the command line.
        metavar: the value's name in ``--help``.
        type: ``int`` or ``float`` for a number (``str`` otherwise); ``minimum``/``maximum`` bound it.
        setting: where the value lands in the settings (``"agent.labels"``); None: the driver takes it itself.
        to_setting: turns the option's value into the setting's (``--no-cloud-logs`` -> ``send_to_api=False``).
        install: see :class:`Install`.
        path: a filesystem path, made absolute on an installed agent's command line.
        deprecated: the warning printed when it is used.
    """

    name: str
    flags: tuple[str, ...]
    help: str
    kind: Kind = Kind.VALUE
    metavar: str | None = None
    type: type[int] | type[float] | type[str] = str
    minimum: float | None = None
    maximum: float | None = None
    setting: str | None = None
    to_setting: Callable[[Any], Any] | None = None
    install: Install = Install.ARGV
    path: bool = False
    deprecated: str | None = None

    @property
    def flag(self) -> str:
        """The long flag (``--label``)."""
        return self.flags[-1]


COMMON_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "key",
        ("-k", "--key"),
        "A runner API key (visible in ps: prefer --key-file). Default: $BATON__API__KEY, then config.toml.",
        setting="api.key",
        install=Install.ENVIRONMENT,
    ),
    OptionSpec(
        "key_file",
        ("--key-file",),
        "Read the API key from this file, which only its owner may read (chmod 600). Default: $BATON__API__KEY_FILE.",
        metavar="PATH",
        setting="api.key_file",
        path=True,  # a key file's path is no secret: the file's mode keeps the key from other users
    ),
    OptionSpec(
        "tenant_id",
        ("--tenant-id",),
        "The tenant (id or name) the agent must connect to: it refuses to start with a key of another tenant. "
        "Default: the tenant of the key (from /api/whoami).",
        setting="api.tenant_id",
    ),
    OptionSpec("api", ("-a", "--api"), "The API URL. Default: $BATON__API__URL, then config.toml.", setting="api.url"),
    OptionSpec(
        "agent_config_id",
        ("--agent-config-id",),
        "An agent config id to link this agent instance with.",
        setting="agent.agent_config_id",
    ),
    OptionSpec(
        "name", ("-n", "--name"), "A name for the agent. Default: from settings, else generated.", setting="agent.name"
    ),
    OptionSpec(
        "labels",
        ("-l", "--label"),
        "A label the agent uses to pick flow runs (repeatable). Default: $BATON__AGENT__LABELS.",
        kind=Kind.MULTIPLE,
        metavar="LABEL",
        setting="agent.labels",
    ),
    OptionSpec(
        "env",
        ("-e", "--env"),
        "An environment variable set on each flow run (repeatable).",
        kind=Kind.MULTIPLE,
        metavar="KEY=VALUE",
        setting="agent.env",
        install=Install.ENVIRONMENT,  # flow runs' credentials, often
    ),
    OptionSpec(
        "max_polls",
        ("--max-polls",),
        "Poll the API at most this many times, then stop. Default: no limit.",
        type=int,
        minimum=0,
        setting="agent.max_polls",
        install=Install.NO,  # a service manager would restart it
    ),
    OptionSpec(
        "agent_address",
        ("--agent-address",),
        "Serve the health check (/api/health, /api/poke, /metrics) here, e.g. http://127.0.0.1:8080.",
        metavar="URL",
        setting="agent.agent_address",
    ),
    OptionSpec(
        "no_cloud_logs",
        ("--no-cloud-logs",),
        "Do not send the logs of flow runs to the API. Default: from settings.",
        kind=Kind.FLAG,
        setting="logging.send_to_api",
        to_setting=lambda given: False if given else None,
    ),
    OptionSpec(
        "log_level",
        ("--log-level",),
        "The agent's log level. Default: from settings.",
        setting="logging.level",
        to_setting=lambda level: level.upper() if level else None,
    ),
    OptionSpec(
        "token",
        ("-t", "--token"),
        "DEPRECATED: an alias of -k/--key.",
        install=Install.NO,  # folded into key
        deprecated="Warning: -t/--token is deprecated; use -k/--key instead.",
    ),
    OptionSpec(
        "limit",
        ("--limit",),
        "The most flow runs this agent deploys at once; 0: no limit. Default for the local and Docker agents: "
        "4 per CPU, and no more than one per 256 MiB of memory; for the Kubernetes agent: no limit.",
        type=int,
        minimum=0,
        setting="agent.limit",
    ),
    OptionSpec(
        "run_timeout_seconds",
        ("--run-timeout",),
        "Kill a flow run still going after this long and fail it (a flow's shorter timeout_seconds wins). "
        "Default: no limit.",
        metavar="SECONDS",
        type=int,
        minimum=1,
        maximum=MAX_TIMEOUT_SECONDS,
        setting="agent.run_timeout_seconds",
    ),
    OptionSpec(
        "allow_executor",
        ("--allow-executor",),
        "An executor run configs may ask for (repeatable; a pattern over the spec whose * spans no . : / [ ], e.g. "
        "dask:tcp://10.0.0.*:8786); local: sequential, thread[:N], process[:N] and dask[:N]. Default: local (no dask "
        "address).",
        kind=Kind.MULTIPLE,
        metavar="PATTERN",
        setting="agent.allow_executor",
    ),
    OptionSpec(
        "max_executor_processes",
        ("--max-executor-processes",),
        "The most processes a run config's executor (process:N, dask:N) may start; 0: no limit. Default: 4 per CPU.",
        metavar="N",
        type=int,
        minimum=0,
        setting="agent.max_executor_processes",
    ),
)

LOCAL_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "import_paths",
        ("-p", "--import-path"),
        "A path added to PYTHONPATH of every flow run (repeatable).",
        kind=Kind.MULTIPLE,
        metavar="PATH",
        setting="agent.import_paths",
        path=True,
    ),
    OptionSpec(
        "show_flow_logs",
        ("-f", "--show-flow-logs"),
        "Show the output of the flow runs in the agent's output.",
        kind=Kind.FLAG,
        setting="agent.show_flow_logs",
    ),
    OptionSpec(
        "hostname_label",
        ("--hostname-label",),
        "Add this host's name to the agent's labels. Default: from settings (yes).",
        kind=Kind.TOGGLE,
        setting="agent.hostname_label",
    ),
    OptionSpec(
        "run_as",
        ("--run-as",),
        "Run flows as this OS user, who must not be able to read the agent's key or config. Needs root. "
        "Default: the agent's own user.",
        metavar="USER",
        setting="agent.run_as",
    ),
    OptionSpec(
        "allow_run_as",
        ("--allow-run-as",),
        "An OS user a flow's LocalRun(user=...) may ask to run as (repeatable). Needs root.",
        kind=Kind.MULTIPLE,
        metavar="USER",
        setting="agent.allow_run_as",
    ),
    OptionSpec(
        "prefork",
        ("--prefork",),
        "Fork each flow run from a warm process that has imported the engine (fast), instead of spawning "
        "python -m baton.engine. Default: from settings (yes).",
        kind=Kind.TOGGLE,
        setting="agent.prefork",
    ),
)

DOCKER_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("base_url", ("-b", "--base-url"), "Docker daemon URL. Default: from the environment."),
    OptionSpec("no_pull", ("--no-pull",), "Never pull images: use only images present locally.", kind=Kind.FLAG),
    OptionSpec(
        "show_flow_logs",
        ("-f", "--show-flow-logs"),
        "Show the containers' output in the agent's output, prefixed by run name.",
        kind=Kind.FLAG,
        setting="agent.show_flow_logs",
    ),
    OptionSpec(
        "volumes",
        ("--volume",),
        "A volume for every flow container (repeatable); a name instead of a host path is a named volume, a bare "
        "/container/path an anonymous one.",
        kind=Kind.MULTIPLE,
        metavar="HOST:CONTAINER[:ro|rw]",
    ),
    OptionSpec(
        "networks",
        ("--network",),
        "A Docker network for every flow container (repeatable); the first one at creation.",
        kind=Kind.MULTIPLE,
        metavar="NETWORK",
    ),
    OptionSpec(
        "docker_client_timeout",
        ("--docker-client-timeout",),
        "Timeout of Docker API calls in seconds (default 60).",
        type=int,
        minimum=1,
    ),
    OptionSpec(
        "no_docker_interface",
        ("--no-docker-interface",),
        "Deprecated, does nothing: accepted so that Prefect 1 command lines keep working.",
        kind=Kind.FLAG,
        install=Install.NO,
        deprecated="Warning: --no-docker-interface is deprecated and does nothing (as in Prefect 1.x).",
    ),
)

KUBERNETES_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("namespace", ("--namespace",), "The namespace of the flow runs' Jobs. Default: default."),
    OptionSpec(
        "job_template_path",
        ("--job-template",),
        "A Job template (YAML) for runs whose run config has none. Default: one container `flow`, never restarted.",
        metavar="PATH",
        path=True,
    ),
    OptionSpec(
        "service_account_name",
        ("--service-account-name",),
        "The service account of the Jobs' pods (a run config's, else the template's, win).",
    ),
    OptionSpec(
        "image_pull_secrets",
        ("--image-pull-secrets",),
        "Image pull secrets of the Jobs' pods, comma-separated (a run config's, else the template's, win).",
        metavar="A,B",
    ),
    OptionSpec(
        "disable_job_deletion", ("--disable-job-deletion",), "Keep finished Jobs (deleted by default).", kind=Kind.FLAG
    ),
    OptionSpec("default_image", ("--image",), "The image of runs that name none. Default: baton:<version>."),
    OptionSpec(
        "allow_pod_option",
        ("--allow-pod-option",),
        "What a run config's job_template may ask beyond a baseline pod (repeatable): hostNetwork, hostPID, "
        "hostIPC, hostPath, hostPort, privileged, capabilities, procMount, seccompProfile, seLinuxOptions, sysctls, "
        "hostProcess, secrets.",
        kind=Kind.MULTIPLE,
        metavar="RULE",
    ),
    OptionSpec(
        "pending_timeout_seconds",
        ("--pending-timeout",),
        "Fail a run whose pod stays unschedulable this many seconds. Default: 300.",
        metavar="SECONDS",
        type=int,
        minimum=1,
    ),
    OptionSpec(
        "kubeconfig",
        ("--kubeconfig",),
        "A kubeconfig file. Default: in-cluster config in a pod, else $KUBECONFIG or ~/.kube/config.",
        metavar="PATH",
        path=True,
    ),
    OptionSpec("context", ("--context",), "The kubeconfig context. Default: its current context."),
)


def given(spec: OptionSpec, value: Any) -> bool:
    """Whether ``value`` was given for ``spec`` (None and an empty list are "left out")."""
    if value is None:
        return False
    if spec.kind is Kind.MULTIPLE:
        return bool(value)
    return True


def settings_overrides(specs: Iterable[OptionSpec], values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The explicit settings ``values`` make, by section (``{"api": {"url": ...}, "agent": {...}}``).

    An option left out maps to None, which leaves the settings' own value in place.
    """
    sections: dict[str, dict[str, Any]] = {"api": {}, "agent": {}, "logging": {}}
    for spec in specs:
        if spec.setting is None:
            continue
        value = values.get(spec.name)
        if spec.to_setting is not None:
            value = spec.to_setting(value)
        # Only None is "left out": an explicit empty list (LocalAgent(labels=[])) overrides the settings' list. The
        # CLI maps a repeatable option given no times to None.
        section, field = spec.setting.split(".", 1)
        sections[section][field] = list(value) if isinstance(value, tuple) else value
    return sections


def command_line(specs: Iterable[OptionSpec], values: Mapping[str, Any]) -> list[str]:
    """The arguments that give ``values`` on an installed agent's command line (secrets and refused ones left
    out); paths made absolute, since a service starts in another directory."""
    argv: list[str] = []
    for spec in specs:
        value: Any = values.get(spec.name)
        if spec.install is not Install.ARGV or not given(spec, value):
            continue
        if spec.kind is Kind.FLAG:
            argv += [spec.flag] if value else []
        elif spec.kind is Kind.TOGGLE:
            argv.append(spec.flag if value else "--no-" + spec.flag.removeprefix("--"))
        elif spec.kind is Kind.MULTIPLE:
            for item in value:
                argv += [spec.flag, _argument(spec, item)]
        else:
            argv += [spec.flag, _argument(spec, value)]
    return argv


def _argument(spec: OptionSpec, value: Any) -> str:
    if spec.path:
        return str(Path(str(value)).expanduser().resolve())
    if spec.to_setting is not None and isinstance(value, str):
        return str(spec.to_setting(value))  # e.g. a log level as the settings spell it
    return str(value)


def check_installable(specs: Sequence[OptionSpec], values: Mapping[str, Any], command: str, restarter: str) -> None:
    """Refuse ``values`` an installed ``command`` cannot take.

    Raises:
        TypeError: a value names no option of ``command``.
        ConfigurationError: an option a service cannot have (``--max-polls``: ``restarter`` would restart it).
    """
    from baton.exceptions import ConfigurationError

    known = {spec.name: spec for spec in specs}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"not options of {command}: {', '.join(unknown)}")
    refused = [spec.flag for spec in specs if spec.install is Install.NO and given(spec, values.get(spec.name))]
    if refused:
        raise ConfigurationError(f"{', '.join(refused)} does not fit an installed agent: {restarter} would restart it")


def names(specs: Sequence[OptionSpec]) -> list[str]:
    return [spec.name for spec in specs]
