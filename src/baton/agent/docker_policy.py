"""The Docker agent's run-config policy: what a flow author's ``DockerRun`` may ask of the agent's host.

A run config is written by whoever registers the flow or creates the run (a user key). The Docker daemon runs as
root, so a ``host_config`` passed on unfiltered gives a container the host: ``privileged``, a bind of ``/``,
``pid_mode: host``, ``cap_add``, devices. The agent's operator decides what is allowed, with the agent's flags;
anything else fails the run before any container is created, with a message that names the refused option and the
flag that would allow it. The operator's own ``--volume`` and ``--network`` (and the default image) are trusted;
only what comes from the run config (and a ``docker`` storage's image) is checked.

- host_config keys in :data:`DEFAULT_HOST_CONFIG` (resource limits and options that only restrict the container)
  are always allowed. ``--allow-host-config KEY`` allows KEY with any value, unchecked. Keys that are not docker-py
  ``create_host_config`` arguments are refused (they would not reach the daemon as written, or not at all).
- ``--allow-bind PREFIX``: binds (``binds``, ``mounts`` of type ``bind``) of host paths under PREFIX: ``/data``
  allows ``/data`` and ``/data/x``, not ``/database``; paths are normalised (``..``) and, when the daemon is on this
  host, symlinks are resolved on the agent's side too (a run that can write under PREFIX must not reach out of it
  through a link it made). The daemon resolves the path again when it mounts: a run that can write under PREFIX
  and races the agent can still swap a directory for a link in between, so allow read-write prefixes only to runs
  you trust as much as the host.
- ``--allow-volume NAME``: named volumes (``name:/path`` binds, ``volume`` mounts) whose name matches the fnmatch
  pattern NAME. A ``volume`` mount with driver options (which can bind any host path) needs
  ``--allow-host-config mounts``.
- ``--allow-image PATTERN``: with at least one, only images matching a pattern (fnmatch, on the reference as
  written or in full: ``docker.io/library/python:3.11``) run; with none, any image. The agent's default image is
  always allowed.
- ``--allow-network NAME``: a run config's ``network_mode`` NAME (``host``, ``container:ID``, a network name). The
  agent's own first ``--network`` is always allowed.
- ``--allow-ports``: the run config's ``ports`` and host_config's ``port_bindings`` / ``publish_all_ports``.

A value that asks for nothing (None, False, 0, empty) is allowed under any known key: it is the daemon's default.

Usage::

    policy = DockerPolicy(allow_host_config=["privileged"], allow_bind=["/srv/data"])
    refusals = PolicyCheck(policy, trusted_image="baton:0.1.0").refusals(run_config, image)
    if refusals:
        raise DeploymentError(refusal_message(refusals))
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baton.exceptions import ConfigurationError
from baton.schemas.core import RunConfig

# docker-py's ``create_host_config`` keyword arguments (docker 7.x), the spelling a run config's host_config uses.
HOST_CONFIG_KEYS = frozenset(
    {
        "auto_remove", "binds", "blkio_weight", "blkio_weight_device", "cap_add", "cap_drop", "cgroup_parent",
        "cgroupns", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime",
        "cpu_shares", "cpuset_cpus", "cpuset_mems", "device_cgroup_rules", "device_read_bps", "device_read_iops",
        "device_requests", "device_write_bps", "device_write_iops", "devices", "dns", "dns_opt", "dns_search",
        "extra_hosts", "group_add", "init", "init_path", "ipc_mode", "isolation", "kernel_memory", "links",
        "log_config", "lxc_conf", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "mounts",
        "nano_cpus", "network_mode", "oom_kill_disable", "oom_score_adj", "pid_mode", "pids_limit", "port_bindings",
        "privileged", "publish_all_ports", "read_only", "restart_policy", "runtime", "security_opt", "shm_size",
        "storage_opt", "sysctls", "tmpfs", "ulimits", "userns_mode", "uts_mode", "volume_driver", "volumes_from",
    }
)  # fmt: skip
# Allowed by default: limits of the container's own resources, and options that only take from the container.
# auto_remove is ignored by the agent (it removes containers itself); tmpfs is memory charged to the container.
DEFAULT_HOST_CONFIG = frozenset(
    {
        "auto_remove", "cap_drop", "cpu_period", "cpu_quota", "cpu_shares", "cpuset_cpus", "cpuset_mems", "init",
        "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "nano_cpus", "pids_limit", "read_only",
        "shm_size", "tmpfs", "ulimits",
    }
)  # fmt: skip
_PORT_KEYS = frozenset({"port_bindings", "publish_all_ports"})
# Keys of a Mounts entry that need no flag (compared case-folded: the daemon's JSON decoder ignores case); others,
# BindOptions (propagation, creating the host path) included, need `--allow-host-config mounts` unless empty.
_MOUNT_KEYS = frozenset({"type", "source", "target", "readonly", "consistency", "volumeoptions", "tmpfsoptions"})
_VOLUME_OPTION_KEYS = frozenset({"nocopy", "labels", "subpath"})
MAX_REFUSALS_SHOWN = 20
MAX_REFUSAL_CHARS = 1000
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the daemon's rule for volume names


def flag_of(field: str) -> str:
    """The agent flag of a :class:`DockerPolicy` field: ``allow_bind`` -> ``--allow-bind``."""
    return "--" + field.replace("_", "-")


def normalize_host_path(path: str) -> str:
    """``path`` without ``.``, ``..`` and repeated slashes (``//etc/../`` -> ``/``)."""
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("/") else normal


def is_under(path: str, prefix: str) -> bool:
    """Whether normalised ``path`` is ``prefix`` or inside it: ``/data`` covers ``/data/x``, not ``/database``."""
    return prefix in ("/", path) or path.startswith(prefix + "/")


class DockerPolicy(BaseModel):
    """What the operator allows run configs to ask of the Docker agent's host. Each field is the agent flag of
    the same name (:func:`flag_of`); the lists are repeatable flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_host_config: list[str] = Field(
        default_factory=list,
        description="Allow this run-config host_config key with any value, e.g. privileged, cap_add, devices.",
        json_schema_extra={"metavar": "KEY"},
    )
    allow_bind: list[str] = Field(
        default_factory=list,
        description="Allow run configs to bind host paths under this absolute path (/data: not /database).",
        json_schema_extra={"metavar": "PREFIX"},
    )
    allow_volume: list[str] = Field(
        default_factory=list,
        description="Allow run configs to mount named volumes whose name matches this pattern (fnmatch).",
        json_schema_extra={"metavar": "NAME"},
    )
    allow_image: list[str] = Field(
        default_factory=list,
        description="Run only images matching one of these patterns (fnmatch, e.g. registry.example.com/team/*); "
        "default: any image.",
        json_schema_extra={"metavar": "PATTERN"},
    )
    allow_network: list[str] = Field(
        default_factory=list,
        description="Allow a run config's host_config network_mode NAME (host, container:ID, a network).",
        json_schema_extra={"metavar": "NAME"},
    )
    allow_ports: bool = Field(
        default=False,
        description="Allow run configs to expose ports (ports) and publish them (port_bindings, publish_all_ports).",
    )

    @field_validator("allow_host_config")
    @classmethod
    def _known_keys(cls, keys: list[str]) -> list[str]:
        unknown = sorted(set(keys) - HOST_CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a host_config option (docker-py create_host_config arguments, "
                "e.g. privileged, cap_add, binds)"
            )
        return sorted(set(keys))

    @field_validator("allow_bind")
    @classmethod
    def _absolute_prefixes(cls, prefixes: list[str]) -> list[str]:
        relative = [prefix for prefix in prefixes if not prefix.startswith("/")]
        if relative:
            raise ValueError(f"{', '.join(relative)}: a bind prefix must be an absolute host path")
        return sorted({normalize_host_path(prefix) for prefix in prefixes})

    @field_validator("allow_volume", "allow_image", "allow_network")
    @classmethod
    def _no_empty_entry(cls, entries: list[str]) -> list[str]:
        if any(not entry.strip() for entry in entries):
            raise ValueError("an entry cannot be empty")
        return [entry.strip() for entry in entries]

    @classmethod
    def parse(cls, values: DockerPolicy | Mapping[str, Any] | None) -> DockerPolicy:
        """A policy from a policy, a mapping of its fields (CLI values: tuples are fine), or None (the defaults).

        Raises:
            ConfigurationError: a field is unknown or invalid; the message names its flag.
        """
        if values is None:
            return cls()
        if isinstance(values, DockerPolicy):
            return values
        given = {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(
                f"{flag_of(str(error['loc'][0])) if error['loc'] else 'policy'}: "
                + str(error["msg"]).removeprefix("Value error, ")
                for error in exc.errors(include_url=False)
            )
            raise ConfigurationError(f"invalid Docker agent policy: {problems}") from None


@dataclass(frozen=True)
class Refusal:
    """One thing a run config asks that the policy refuses; ``flag`` would allow it (None: nothing can)."""

    option: str
    problem: str
    flag: str | None = None

    def __str__(self) -> str:
        allow = f" (start the agent with {self.flag} to allow it)" if self.flag else ""
        return f"{self.option}: {self.problem}{allow}"


def refusal_message(refusals: list[Refusal]) -> str:
    """The Failed message of a refused run: the refusals, each naming its option and flag.

    Bounded (the first :data:`MAX_REFUSALS_SHOWN`, each cut to :data:`MAX_REFUSAL_CHARS`): a run config is the
    flow author's, and a message longer than the API takes would leave the run unfailed and the agent stuck on it.
    """
    shown = [_cut(str(refusal), MAX_REFUSAL_CHARS) for refusal in refusals[:MAX_REFUSALS_SHOWN]]
    if len(refusals) > MAX_REFUSALS_SHOWN:
        shown.append(f"and {len(refusals) - MAX_REFUSALS_SHOWN} more")
    return "the Docker agent's policy refuses this run config: " + "; ".join(shown)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _asks_nothing(value: Any) -> bool:
    # Docker's zero values are its defaults: `privileged: false` or `cap_add: []` ask for nothing.
    return value is None or value is False or (not isinstance(value, bool) and value in (0, "", [], {}))


def full_image_name(image: str) -> str:
    """``image`` with its registry and namespace: ``python:3.11`` -> ``docker.io/library/python:3.11``."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    if rest:
        return f"docker.io/{image}"
    return f"docker.io/library/{image}"


class PolicyCheck:
    """Checks run configs against a policy, given what the operator chose and is therefore trusted.

    Args:
        policy: the operator's policy.
        trusted_image: the agent's default image (always allowed).
        trusted_network: the agent's own first ``--network`` (a run config may name it).
        resolve: resolves symlinks of a host path as the daemon will see it (``os.path.realpath`` when the daemon
            is on this host), or None.
    """

    def __init__(
        self,
        policy: DockerPolicy,
        *,
        trusted_image: str | None = None,
        trusted_network: str | None = None,
        resolve: Callable[[str], str] | None = None,
    ) -> None:
        self.policy = policy
        self.trusted_image = trusted_image
        self.trusted_network = trusted_network
        self.resolve = resolve
        self._wholesale = DEFAULT_HOST_CONFIG | set(policy.allow_host_config)

    def refusals(self, run_config: RunConfig, image: str) -> list[Refusal]:
        """Everything ``run_config`` (to run ``image``) asks that the policy does not allow; empty if none."""
        found = list(self._image(image))
        if run_config.ports and not self.policy.allow_ports:
            found.append(Refusal(f"ports {run_config.ports}", "exposing ports is not allowed", flag_of("allow_ports")))
        for key, value in run_config.host_config.items():
            found.extend(self._host_config_key(key, value))
        return found

    def _image(self, image: str) -> Iterator[Refusal]:
        patterns = self.policy.allow_image
        if not patterns or image == self.trusted_image:
            return
        names = (image, full_image_name(image))
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns):
            problem = f"matches none of the agent's image patterns ({', '.join(patterns)})"
            yield Refusal(f"image {image}", problem, f"{flag_of('allow_image')} {image}")

    def _host_config_key(self, key: str, value: Any) -> Iterator[Refusal]:
        option = f"host_config.{key}"
        if key not in HOST_CONFIG_KEYS:
            yield Refusal(option, "is not a host_config option (docker-py create_host_config arguments, snake_case)")
        elif key in self._wholesale or _asks_nothing(value):
            return
        elif key == "binds":
            yield from self._binds(value)
        elif key == "mounts":
            yield from self._mounts(value)
        elif key == "network_mode":
            yield from self._network(value)
        elif key in _PORT_KEYS and self.policy.allow_ports:
            return
        else:
            flag = f"{flag_of('allow_host_config')} {key}"
            if key in _PORT_KEYS:
                flag = flag_of("allow_ports")
            yield Refusal(option, "is not allowed by the agent", flag)

    def _network(self, value: Any) -> Iterator[Refusal]:
        if not isinstance(value, str):
            yield Refusal("host_config.network_mode", f"must be a string, not {type(value).__name__}")
        elif value != self.trusted_network and value not in self.policy.allow_network:
            yield Refusal(f"host_config.network_mode {value}", "is not allowed", f"{flag_of('allow_network')} {value}")

    # --- binds and mounts --------------------------------------------------------------------------

    def _binds(self, value: Any) -> Iterator[Refusal]:
        whole = f"{flag_of('allow_host_config')} binds"
        try:
            specs = bind_specs(value)
        except ValueError as exc:
            yield Refusal("host_config.binds", str(exc), whole)
            return
        for index, spec in enumerate(specs):
            option = f"host_config.binds[{index}] {spec!r}"
            parts = spec.split(":")
            if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
                yield Refusal(option, "is not SOURCE:TARGET[:MODE]")
            else:
                yield from self._source(option, parts[0], whole)

    def _mounts(self, value: Any) -> Iterator[Refusal]:
        whole = f"{flag_of('allow_host_config')} mounts"
        if not isinstance(value, list):
            yield Refusal("host_config.mounts", "must be a list of mounts", whole)
            return
        for index, entry in enumerate(value):
            option = f"host_config.mounts[{index}]"
            mount = _case_folded(entry)
            if mount is None:
                yield Refusal(option, "must be an object whose keys differ in more than case", whole)
                continue
            extra = sorted(key for key in set(mount) - _MOUNT_KEYS if not _asks_nothing(mount[key]))
            kind = str(mount.get("type") or "")
            if extra:
                yield Refusal(option, f"has options the agent does not check ({', '.join(extra)})", whole)
            elif kind == "bind":
                yield from self._source(option, mount.get("source"), whole, named=False)
            elif kind == "volume":
                yield from self._volume_mount(option, mount, whole)
            elif kind != "tmpfs":
                yield Refusal(option, f"a mount of type {kind or '(none)'!r} is not allowed", whole)

    def _volume_mount(self, option: str, mount: dict[str, Any], whole: str) -> Iterator[Refusal]:
        options = _case_folded(mount.get("volumeoptions") or {})
        if options is None or set(options) - _VOLUME_OPTION_KEYS:
            # DriverConfig: the local driver's `o=bind,device=/` mounts any host path.
            yield Refusal(option, "volume options other than NoCopy, Labels, Subpath are not allowed", whole)
        elif mount.get("source"):  # no source: an anonymous volume, the container's own
            yield from self._source(option, mount["source"], whole, named=True)

    def _source(self, option: str, source: Any, whole: str, named: bool | None = None) -> Iterator[Refusal]:
        """A bind's or mount's source: a host path under an allowed prefix, or an allowed volume name."""
        if not isinstance(source, str) or not source:
            yield Refusal(option, "has no source")
        elif source.startswith("/") and named is not True:
            yield from self._host_path(option, source)
        elif named is not False and _VOLUME_NAME.match(source):
            if not any(fnmatch.fnmatchcase(source, pattern) for pattern in self.policy.allow_volume):
                yield Refusal(option, f"volume {source} is not allowed", f"{flag_of('allow_volume')} {source}")
        else:
            expected = {True: "a volume name", False: "an absolute host path", None: "a host path or a volume name"}
            yield Refusal(option, f"source {source!r} is not {expected[named]}", whole)

    def _host_path(self, option: str, source: str) -> Iterator[Refusal]:
        flag = flag_of("allow_bind")
        path = normalize_host_path(source)
        if not self._bind_allowed(path):
            yield Refusal(option, f"host path {path} is outside the allowed bind prefixes", f"{flag} {path}")
            return
        if self.resolve is None:
            return
        # Docker 20.10 cleans the path before mounting (`/data/link/..` is /data); a daemon that did not would let
        # the kernel take `..` after following the link (the parent of its target). Both must stay inside.
        for candidate in dict.fromkeys((path, source)):
            resolved = normalize_host_path(self.resolve(candidate))
            if not self._bind_allowed(resolved):
                problem = f"host path {source} resolves (through a symlink) to {resolved}, outside the allowed prefixes"
                yield Refusal(option, problem, f"{flag} {resolved}")
                return

    def _bind_allowed(self, path: str) -> bool:
        return any(is_under(path, prefix) for prefix in self.policy.allow_bind)


def bind_specs(binds: Any) -> list[str]:
    """``binds`` as docker-py sends them: ``SOURCE:TARGET:MODE`` strings (its ``convert_volume_binds``).

    Raises:
        ValueError: not a list of strings nor a mapping of sources to targets.
    """
    if isinstance(binds, list):
        if not all(isinstance(spec, str) for spec in binds):
            raise ValueError("must be a list of SOURCE:TARGET[:MODE] strings")
        return list(binds)
    if not isinstance(binds, dict):
        raise ValueError("must be a list of SOURCE:TARGET[:MODE] strings or a mapping of sources to targets")
    specs = []
    for source, target in binds.items():
        if isinstance(target, dict):
            mode = target.get("mode") or ("ro" if target.get("ro") else "rw")
            specs.append(f"{source}:{target.get('bind')}:{mode}")
        else:
            specs.append(f"{source}:{target}:rw")
    return specs


def _case_folded(entry: Any) -> dict[str, Any] | None:
    """``entry``'s keys case-folded, or None if it is not an object or two keys fold alike.

    The daemon's JSON decoder matches field names without regard to case (and folds the long s, U+017F, to ``s``
    and the Kelvin sign to ``k``, as ``casefold`` does): ``{"Source": "/data", "source": "/"}`` must not check one
    and mount the other.
    """
    if not isinstance(entry, dict):
        return None
    folded: dict[str, Any] = {}
    for key, value in entry.items():
        name = str(key).casefold()
        if name in folded:
            return None
        folded[name] = value
    return folded
