"""The Docker agent's run-config policy: every route to the host is refused by default, naming the flag that
allows it; the flag allows it; bind prefixes compare path components, after normalisation and symlinks."""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from docker.types import HostConfig

from baton.agent.docker import DockerAgent
from baton.agent.docker_policy import (
    DEFAULT_HOST_CONFIG,
    HOST_CONFIG_KEYS,
    DockerPolicy,
    PolicyCheck,
    Refusal,
    refusal_message,
)
from baton.cli.main import cli
from baton.exceptions import ConfigurationError, DeploymentError
from baton.schemas.core import RunConfig
from baton.settings import BatonSettings

from .fake_api import FakeApi

IMAGE = "baton:0.1.0"


def refusals(host_config: dict[str, Any] | None = None, policy: DockerPolicy | None = None, **check: Any) -> list[str]:
    """The refusals of a docker run config with ``host_config`` (and ``ports``/``image`` in ``check``), as text."""
    ports = check.pop("ports", [])
    image = check.pop("image", IMAGE)
    checker = PolicyCheck(policy or DockerPolicy(), trusted_image=IMAGE, **check)
    run_config = RunConfig(type="docker", host_config=host_config or {}, ports=ports)
    return [str(refusal) for refusal in checker.refusals(run_config, image)]


def only_refusal(host_config: dict[str, Any], policy: DockerPolicy | None = None, **check: Any) -> str:
    [refusal] = refusals(host_config, policy, **check)
    return refusal


# --- host_config keys ------------------------------------------------------------------------------------

# Every route to the host the issue names, and the flag the message must name.
SMUGGLING = [
    ({"privileged": True}, "privileged"),
    ({"cap_add": ["ALL"]}, "cap_add"),
    ({"cap_add": ["SYS_ADMIN"]}, "cap_add"),
    ({"security_opt": ["seccomp=unconfined"]}, "security_opt"),
    ({"security_opt": ["apparmor=unconfined", "label=disable"]}, "security_opt"),
    ({"devices": ["/dev/sda:/dev/sda:rwm"]}, "devices"),
    ({"device_requests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]}, "device_requests"),
    ({"device_cgroup_rules": ["b *:* rwm"]}, "device_cgroup_rules"),
    ({"pid_mode": "host"}, "pid_mode"),
    ({"ipc_mode": "host"}, "ipc_mode"),
    ({"uts_mode": "host"}, "uts_mode"),
    ({"userns_mode": "host"}, "userns_mode"),
    ({"cgroupns": "host"}, "cgroupns"),
    ({"cgroup_parent": "/system.slice"}, "cgroup_parent"),
    ({"volumes_from": ["some-container"]}, "volumes_from"),
    ({"links": {"db": "db"}}, "links"),
    ({"sysctls": {"kernel.shm_rmid_forced": "1"}}, "sysctls"),
    ({"oom_kill_disable": True}, "oom_kill_disable"),
    ({"oom_score_adj": -1000}, "oom_score_adj"),
    ({"extra_hosts": {"api.example.com": "10.0.0.1"}}, "extra_hosts"),
    ({"dns": ["10.0.0.1"]}, "dns"),
    ({"dns_search": ["evil.example"]}, "dns_search"),
    ({"group_add": ["docker"]}, "group_add"),
    ({"runtime": "runc-unsafe"}, "runtime"),
    ({"init_path": "/usr/bin/evil"}, "init_path"),
    ({"log_config": {"type": "syslog", "config": {"syslog-address": "tcp://10.0.0.1:514"}}}, "log_config"),
    ({"restart_policy": {"Name": "always"}}, "restart_policy"),
    ({"storage_opt": {"size": "1T"}}, "storage_opt"),
    ({"volume_driver": "local"}, "volume_driver"),
    ({"isolation": "process"}, "isolation"),
]


@pytest.mark.parametrize(("host_config", "key"), SMUGGLING, ids=[key for _, key in SMUGGLING])
def test_each_route_to_the_host_is_refused_by_default_naming_the_flag(host_config: dict[str, Any], key: str) -> None:
    refusal = only_refusal(host_config)

    assert refusal == (
        f"host_config.{key}: is not allowed by the agent (start the agent with --allow-host-config {key} to allow it)"
    )


@pytest.mark.parametrize(("host_config", "key"), SMUGGLING, ids=[key for _, key in SMUGGLING])
def test_allow_host_config_allows_that_key_and_no_other(host_config: dict[str, Any], key: str) -> None:
    assert refusals(host_config, DockerPolicy(allow_host_config=[key])) == []
    other = "privileged" if key != "privileged" else "pid_mode"
    assert refusals(
        {**host_config, other: "host" if other == "pid_mode" else True}, DockerPolicy(allow_host_config=[key])
    )


def test_resource_limits_are_allowed_by_default() -> None:
    limits = {
        "mem_limit": "64m",
        "memswap_limit": "128m",
        "mem_reservation": "32m",
        "mem_swappiness": 0,
        "nano_cpus": 500_000_000,
        "cpu_shares": 512,
        "cpu_quota": 50_000,
        "cpu_period": 100_000,
        "cpuset_cpus": "0",
        "cpuset_mems": "0",
        "shm_size": "256m",
        "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}],
        "pids_limit": 100,
        "init": True,
        "read_only": True,
        "cap_drop": ["ALL"],
        "tmpfs": {"/scratch": "size=64m"},
        "auto_remove": True,
    }
    assert set(limits) == set(DEFAULT_HOST_CONFIG)

    assert refusals(limits) == []


def test_values_that_ask_for_nothing_are_allowed() -> None:
    asks_nothing = {"privileged": False, "cap_add": [], "devices": None, "pid_mode": "", "oom_score_adj": 0}

    assert refusals(asks_nothing) == []
    assert refusals({"privileged": 1})  # not a default: True by another spelling
    assert refusals({"privileged": "false"})  # a non-empty string is not "nothing" either


@pytest.mark.parametrize("key", ["Privileged", "PRIVILEGED", "CapAdd", "Binds", "NetworkMode", "version", "nope"])
def test_keys_that_are_not_docker_py_arguments_are_refused_and_no_flag_allows_them(key: str) -> None:
    refusal = only_refusal({key: True}, DockerPolicy(allow_host_config=["privileged", "cap_add", "binds"]))

    assert refusal.startswith(f"host_config.{key}: is not a host_config option")
    assert "--allow" not in refusal


def test_the_known_keys_are_docker_pys_create_host_config_arguments() -> None:
    arguments = set(inspect.signature(HostConfig.__init__).parameters) - {"self", "version"}

    assert arguments == HOST_CONFIG_KEYS


def test_a_policy_naming_an_unknown_key_or_a_relative_prefix_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"--allow-host-config: Privileged: not a host_config option"):
        DockerPolicy.parse({"allow_host_config": ("Privileged",)})
    with pytest.raises(ConfigurationError, match=r"--allow-bind: data: a bind prefix must be an absolute host path"):
        DockerPolicy.parse({"allow_bind": ["data"]})
    with pytest.raises(ConfigurationError, match=r"--allow-image: an entry cannot be empty"):
        DockerPolicy.parse({"allow_image": [" "]})


# --- binds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binds", "path"),
    [
        (["/:/host"], "/"),
        (["/:/host:ro"], "/"),
        (["/etc:/etc2:rw"], "/etc"),
        (["/var/run/docker.sock:/var/run/docker.sock"], "/var/run/docker.sock"),
        ({"/": {"bind": "/host", "mode": "rw"}}, "/"),
        ({"/root": "/r"}, "/root"),
        (["//:/host"], "/"),
        (["/data/../:/host"], "/"),
        (["/data/./../etc/:/x"], "/etc"),
    ],
)
def test_a_bind_of_a_host_path_is_refused_by_default_naming_allow_bind(binds: Any, path: str) -> None:
    refusal = only_refusal({"binds": binds})

    assert f": host path {path} is outside the allowed bind prefixes" in refusal
    assert refusal.endswith(f"(start the agent with --allow-bind {path} to allow it)")


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("/data", True),
        ("/data/", True),
        ("/data/x/y", True),
        ("/data/./x", True),
        ("/database", False),
        ("/data-2", False),
        ("/dat", False),
        ("/data/../etc", False),
        ("/data/x/../../etc", False),
        ("/", False),
        ("//data/x", True),
    ],
)
def test_allow_bind_allows_the_prefix_and_what_is_under_it_by_path_components(source: str, allowed: bool) -> None:
    policy = DockerPolicy(allow_bind=["/data/"])

    found = refusals({"binds": [f"{source}:/mnt:rw"]}, policy)

    assert (found == []) is allowed, found


def test_allow_bind_of_the_root_allows_any_host_path() -> None:
    assert refusals({"binds": ["/:/host:ro", "/etc:/e"]}, DockerPolicy(allow_bind=["/"])) == []


def test_a_symlink_under_an_allowed_prefix_that_leads_out_of_it_is_refused(tmp_path: Path) -> None:
    # Given a run that could write under the allowed prefix, and left a link to / there
    allowed = tmp_path / "data"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/")
    (allowed / "inside").symlink_to(allowed / "real")
    policy = DockerPolicy(allow_bind=[str(allowed)])

    refusal = only_refusal({"binds": [f"{allowed}/escape/etc:/x"]}, policy, resolve=os.path.realpath)

    assert f"host path {allowed}/escape/etc resolves (through a symlink) to /etc, outside the allowed" in refusal
    assert refusal.endswith("(start the agent with --allow-bind /etc to allow it)")
    assert refusals({"binds": [f"{allowed}/inside:/x"]}, policy, resolve=os.path.realpath) == []


def test_dot_dot_after_a_symlink_is_refused_if_the_kernel_would_leave_the_prefix(tmp_path: Path) -> None:
    # /data/link/.. is /data to a lexical normalisation (Docker 20.10 cleans paths), but the parent of the link's
    # target to the kernel: a daemon that did not clean paths would mount that
    allowed = tmp_path / "data"
    (tmp_path / "outside" / "deep").mkdir(parents=True)
    allowed.mkdir()
    (allowed / "link").symlink_to(tmp_path / "outside" / "deep")
    policy = DockerPolicy(allow_bind=[str(allowed)])

    refusal = only_refusal({"binds": [f"{allowed}/link/..:/x"]}, policy, resolve=os.path.realpath)

    assert refusal.endswith(f"(start the agent with --allow-bind {tmp_path / 'outside'} to allow it)")


@pytest.mark.parametrize(
    "binds",
    [["/data:/a:/b:rw"], {"/data:/x": "/y"}, [":/x"], ["/data:"], ["~/secrets:/x"], ["../etc:/x"], ["/data"]],
)
def test_a_malformed_bind_is_refused(binds: Any) -> None:
    assert refusals({"binds": binds}, DockerPolicy(allow_bind=["/data"]))


def test_binds_that_are_not_a_list_or_mapping_are_refused() -> None:
    assert "must be a list" in only_refusal({"binds": "/:/host"})
    assert "must be a list" in only_refusal({"binds": [["/", "/host"]]})


def test_named_volumes_need_allow_volume_patterns() -> None:
    refusal = only_refusal({"binds": ["other-tenants-cache:/cache"]})
    assert refusal == (
        "host_config.binds[0] 'other-tenants-cache:/cache': volume other-tenants-cache is not allowed "
        "(start the agent with --allow-volume other-tenants-cache to allow it)"
    )

    assert refusals({"binds": ["cache-1:/cache"]}, DockerPolicy(allow_volume=["cache-*"])) == []
    assert refusals({"binds": ["data:/cache"]}, DockerPolicy(allow_volume=["cache-*"]))


def test_allow_host_config_binds_allows_every_bind() -> None:
    assert refusals({"binds": ["/:/host", "x:/x"]}, DockerPolicy(allow_host_config=["binds"])) == []


# --- mounts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mount",
    [
        {"Type": "bind", "Source": "/", "Target": "/host"},
        {"type": "bind", "source": "/", "target": "/host"},  # the daemon reads JSON keys in any case
        {"TYPE": "bind", "SOURCE": "/data/../", "TARGET": "/host"},
        {"Type": "bind", "\u017fource": "/", "Target": "/host"},  # the long s folds to s in Go's JSON decoder
    ],
)
def test_a_bind_mount_of_the_root_is_refused_naming_allow_bind(mount: dict[str, Any]) -> None:
    refusal = only_refusal({"mounts": [mount]})

    assert refusal.endswith("(start the agent with --allow-bind / to allow it)")


def test_keys_that_differ_only_in_case_are_refused_whatever_the_order() -> None:
    two_sources = {"Type": "bind", "Source": "/data/x", "source": "/", "Target": "/host"}

    refusal = only_refusal({"mounts": [two_sources]}, DockerPolicy(allow_bind=["/data"]))

    assert "keys differ in more than case" in refusal
    assert refusal.endswith("--allow-host-config mounts to allow it)")


def test_a_volume_mount_with_driver_options_is_refused_even_for_an_allowed_volume() -> None:
    # The local driver's bind option mounts any host path under a harmless-looking volume.
    mount = {
        "Type": "volume",
        "Source": "cache",
        "Target": "/x",
        "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}},
    }
    refusal = only_refusal({"mounts": [mount]}, DockerPolicy(allow_volume=["*"]))

    assert "volume options other than NoCopy, Labels, Subpath are not allowed" in refusal
    assert refusal.endswith("--allow-host-config mounts to allow it)")


@pytest.mark.parametrize(
    ("mount", "flag"),
    [
        ({"Type": "bind", "Source": "/data/x", "Target": "/x", "BindOptions": {"Propagation": "rshared"}}, "mounts"),
        ({"Type": "npipe", "Source": "/x", "Target": "/x"}, "mounts"),
        ({"Type": "image", "Source": "alpine", "Target": "/x"}, "mounts"),
        ({"Source": "/data", "Target": "/x"}, "mounts"),
        ({"Type": "bind", "Source": "data/x", "Target": "/x"}, "mounts"),
    ],
)
def test_mounts_the_agent_does_not_check_need_allow_host_config_mounts(mount: dict[str, Any], flag: str) -> None:
    refusal = only_refusal({"mounts": [mount]}, DockerPolicy(allow_bind=["/data"]))

    assert refusal.endswith(f"--allow-host-config {flag} to allow it)")
    assert refusals({"mounts": [mount]}, DockerPolicy(allow_host_config=["mounts"])) == []


def test_allowed_mounts() -> None:
    policy = DockerPolicy(allow_bind=["/data"], allow_volume=["cache"])
    mounts = [
        {"Type": "bind", "Source": "/data/in", "Target": "/in", "ReadOnly": True, "BindOptions": {}},
        {"Type": "volume", "Source": "cache", "Target": "/cache", "VolumeOptions": {"NoCopy": True}},
        {"Type": "volume", "Target": "/anonymous"},
        {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 1 << 20}},
    ]

    assert refusals({"mounts": mounts}, policy) == []
    assert len(refusals({"mounts": mounts})) == 2  # the bind and the named volume


# --- network, ports, image ---------------------------------------------------------------------------------


def test_a_network_mode_needs_allow_network_unless_it_is_the_agents_own() -> None:
    assert only_refusal({"network_mode": "host"}) == (
        "host_config.network_mode host: is not allowed (start the agent with --allow-network host to allow it)"
    )
    assert only_refusal({"network_mode": "container:db"}).endswith("--allow-network container:db to allow it)")
    assert refusals({"network_mode": "host"}, trusted_network="host") == []
    assert refusals({"network_mode": "front"}, DockerPolicy(allow_network=["front"])) == []
    assert refusals({"network_mode": "host"}, DockerPolicy(allow_network=["front"]))


def test_ports_need_allow_ports() -> None:
    assert refusals(ports=[8080]) == [
        "ports [8080]: exposing ports is not allowed (start the agent with --allow-ports to allow it)"
    ]
    assert only_refusal({"port_bindings": {8080: ("0.0.0.0", 80)}}).endswith("--allow-ports to allow it)")
    assert only_refusal({"publish_all_ports": True}).endswith("--allow-ports to allow it)")
    allowed = DockerPolicy(allow_ports=True)
    assert refusals({"port_bindings": {8080: 80}, "publish_all_ports": True}, allowed, ports=[8080]) == []


def test_with_image_patterns_only_matching_images_and_the_default_run() -> None:
    policy = DockerPolicy(allow_image=["registry.example.com/team/*", "docker.io/library/python:3.11*"])

    assert refusals(policy=policy, image="registry.example.com/team/app:1") == []
    assert refusals(policy=policy, image="python:3.11-slim") == []  # docker.io/library/python:3.11-slim
    assert refusals(policy=policy, image=IMAGE) == []  # the agent's default
    assert refusals(policy=policy, image="registry.example.com/other/app:1") == [
        "image registry.example.com/other/app:1: matches none of the agent's image patterns "
        "(registry.example.com/team/*, docker.io/library/python:3.11*) (start the agent with --allow-image "
        "registry.example.com/other/app:1 to allow it)"
    ]
    assert refusals(policy=policy, image="evil.example/python:3.11")
    assert refusals(image="anything.example/at/all:1") == []  # no patterns: any image


def test_the_message_lists_every_refusal() -> None:
    found = [Refusal("host_config.privileged", "is not allowed", "--allow-host-config privileged"), Refusal("x", "y")]

    assert refusal_message(found) == (
        "the Docker agent's policy refuses this run config: host_config.privileged: is not allowed "
        "(start the agent with --allow-host-config privileged to allow it); x: y"
    )


def test_the_message_of_a_hostile_run_config_stays_short() -> None:
    host_config = {f"key_{n}": True for n in range(10_000)} | {"binds": ["/" + "x" * 100_000 + ":/x"]}

    message = refusal_message(PolicyCheck(DockerPolicy()).refusals(RunConfig(host_config=host_config), IMAGE))

    assert len(message) < 25_000
    assert message.endswith("; and 9981 more")


# --- the agent and its CLI ---------------------------------------------------------------------------------


def test_the_agent_takes_a_policy_or_its_fields_and_refuses_a_bad_one(settings: BatonSettings, api: FakeApi) -> None:
    assert DockerAgent(settings=settings, client=api).driver.run_policy == DockerPolicy()
    agent = DockerAgent(settings=settings, client=api, policy={"allow_bind": ["/srv/"], "allow_ports": True})
    assert agent.driver.run_policy == DockerPolicy(allow_bind=["/srv"], allow_ports=True)
    with pytest.raises(ConfigurationError, match="--allow-network: an entry cannot be empty"):
        DockerAgent(settings=settings, client=api, policy={"allow_network": [""]})


def test_a_refused_run_fails_its_deployment_before_the_daemon_is_asked(
    settings: BatonSettings, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = DockerAgent(settings=settings, client=api, base_url="unix:///nonexistent/docker.sock")
    monkeypatch.setattr(agent.driver, "_docker_client", lambda: pytest.fail("the daemon was asked"))
    run_id = api.add_run(type="docker", host_config={"privileged": True, "binds": ["/:/h"]})
    claimed = api.claimed_run(api.runs[run_id])

    with pytest.raises(DeploymentError) as raised:
        asyncio.run(agent.driver.deploy(claimed, {}))

    assert str(raised.value) == (
        "the Docker agent's policy refuses this run config: host_config.privileged: is not allowed by the agent "
        "(start the agent with --allow-host-config privileged to allow it); host_config.binds[0] '/:/h': host "
        "path / is outside the allowed bind prefixes (start the agent with --allow-bind / to allow it)"
    )


def test_the_cli_flags_reach_the_agent_as_its_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    import baton.agent

    built: list[dict[str, Any]] = []

    class FakeDockerAgent:
        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)

        def start(self) -> None:
            return None

    monkeypatch.setattr(baton.agent, "DockerAgent", FakeDockerAgent, raising=False)
    args = ["agent", "docker", "start", "-k", "bat_k", "--allow-host-config", "privileged", "--allow-host-config"]
    args += ["cap_add", "--allow-bind", "/srv/data", "--allow-volume", "cache-*", "--allow-image", "python:*"]
    args += ["--allow-network", "host", "--allow-ports"]

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 0, result.output
    assert built[0]["policy"] == DockerPolicy(
        allow_host_config=["cap_add", "privileged"],
        allow_bind=["/srv/data"],
        allow_volume=["cache-*"],
        allow_image=["python:*"],
        allow_network=["host"],
        allow_ports=True,
    )
    result = CliRunner().invoke(cli, ["agent", "docker", "start", "-k", "bat_k"])
    assert built[1]["policy"] == DockerPolicy()


def test_a_bad_policy_flag_is_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["agent", "docker", "start", "-k", "bat_k", "--allow-host-config", "Privileged"])

    assert result.exit_code == 2
    assert result.stderr.startswith(
        "Error: configuration: invalid Docker agent policy: --allow-host-config: Privileged: not a host_config option"
    )
