"""What the Docker agent decides before talking to the daemon: volumes, networks, images, names, the API address."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from docker import APIClient

from baton.agent.docker import DockerAgent
from baton.agent.docker_spec import (
    NetworkPlan,
    VolumeSpec,
    container_api_url,
    container_labels,
    container_name,
    image_of,
    normalize_registries,
    parse_volume,
    parse_volumes,
    plan_networks,
    registry_of,
)
from baton.exceptions import ConfigurationError, DeploymentError
from baton.schemas.core import RunConfig, Storage
from baton.settings import BatonSettings

from .fake_api import FakeApi


def claimed_run(api: FakeApi, storage: dict[str, Any] | None = None, **run_config: Any) -> Any:
    run_id = api.add_run(type="docker", **run_config)
    claimed = api.claimed_run(api.runs[run_id])
    if storage is not None:
        claimed.flow.storage = Storage(**storage)
    return claimed


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/srv/data:/data", VolumeSpec("/srv/data", "/data", "rw", named=False)),
        ("/srv/data:/data:ro", VolumeSpec("/srv/data", "/data", "ro", named=False)),
        ("cache:/cache:rw", VolumeSpec("cache", "/cache", "rw", named=True)),
        ("my_vol.1:/v", VolumeSpec("my_vol.1", "/v", "rw", named=True)),
        # Prefect 1's and Docker's bare container path: an anonymous volume
        ("/volume1", VolumeSpec("", "/volume1", "rw", named=False)),
    ],
)
def test_volume_specs_are_bind_mounts_or_named_volumes(spec: str, expected: VolumeSpec) -> None:
    assert parse_volume(spec) == expected


def test_relative_and_home_paths_are_made_absolute_host_paths() -> None:
    assert parse_volume("./data:/data").source == os.path.abspath("data")
    assert parse_volume("~/data:/data:ro").source == os.path.expanduser("~/data")
    assert parse_volume("/srv/data:/data:ro").bind == "/srv/data:/data:ro"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("data", "expected HOST:CONTAINER"),
        ("/a:/b:ro:x", "expected HOST:CONTAINER"),
        (":/data", "expected HOST:CONTAINER"),
        ("/srv:/data:rx", "must be ro or rw"),
        ("/srv:data", "must be absolute"),
        ("bad name!:/data", "neither a host path"),
    ],
)
def test_a_malformed_volume_spec_is_refused_naming_it(spec: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        parse_volume(spec)
    assert repr(spec) in str(caught.value)


def test_two_volumes_on_one_container_path_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="/data mounted more than once"):
        parse_volumes(["/a:/data", "b:/data:ro"])


def test_the_first_network_is_given_at_creation_the_others_connected_after() -> None:
    assert plan_networks([]) == NetworkPlan()
    assert plan_networks(["front", "back", "db"]) == NetworkPlan(mode="front", connect=("back", "db"))
    assert plan_networks(["host"]).host_network
    assert plan_networks(["none"]) == NetworkPlan(mode="none")


@pytest.mark.parametrize("networks", [["host", "front"], ["front", "none"], ["a", "a"], [""]])
def test_impossible_network_combinations_are_refused(networks: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="--network"):
        plan_networks(networks)


def test_the_image_is_the_run_configs_then_the_docker_storages_then_the_default() -> None:
    api = FakeApi()
    assert image_of(claimed_run(api, image="team/etl:3"), "baton:x") == "team/etl:3"
    docker_storage = {"type": "docker", "image": "team/flows:7"}
    assert image_of(claimed_run(api, storage=docker_storage), "baton:x") == "team/flows:7"
    assert image_of(claimed_run(api, storage=docker_storage, image="team/etl:3"), "baton:x") == "team/etl:3"
    assert image_of(claimed_run(api), "baton:x") == "baton:x"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("python:3.11-slim", "docker.io"),
        ("team/etl", "docker.io"),
        ("registry.example.com/team/etl:3", "registry.example.com"),
        ("127.0.0.1:5000/etl@sha256:" + "a" * 64, "127.0.0.1:5000"),
        ("localhost/etl", "localhost"),
    ],
)
def test_the_registry_of_an_image(image: str, registry: str) -> None:
    assert registry_of(image) == registry


def test_an_invalid_image_name_fails_the_deployment() -> None:
    with pytest.raises(DeploymentError, match="invalid image name"):
        registry_of("-bad-.example.com/etl")


def test_allow_list_entries_are_spelled_like_registries() -> None:
    assert normalize_registries(["index.docker.io", " registry.example.com ", ""]) == {
        "docker.io",
        "registry.example.com",
    }


@pytest.mark.parametrize(
    ("url", "host_network", "expected"),
    [
        ("http://127.0.0.1:4200", True, ("http://127.0.0.1:4200", False)),
        ("http://127.0.0.1:4200", False, ("http://host.docker.internal:4200", True)),
        ("http://localhost:4200/base", False, ("http://host.docker.internal:4200/base", True)),
        ("https://[::1]", False, ("https://host.docker.internal", True)),
        ("http://127.0.0.2:80", False, ("http://host.docker.internal:80", True)),
        ("https://api.example.com", False, ("https://api.example.com", False)),
    ],
)
def test_the_api_url_seen_from_a_container(url: str, host_network: bool, expected: tuple[str, bool]) -> None:
    assert container_api_url(url, host_network) == expected


def test_container_names_are_readable_and_unique_per_run() -> None:
    api = FakeApi()
    claimed = claimed_run(api)
    claimed.flow_run.name = "Nightly ETL (eu/west)"
    claimed.flow_run.id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert container_name(claimed) == "baton-Nightly-ETL-eu-west-0f1e2d3c"
    claimed.flow_run.name = "***"
    assert container_name(claimed) == "baton-run-0f1e2d3c"


def test_containers_are_labelled_with_their_run_flow_flow_name_agent_and_tenant() -> None:
    claimed = claimed_run(FakeApi())
    assert container_labels(claimed, "agent-7", "tenant-1") == {
        "io.baton.flow-run-id": claimed.flow_run.id,
        "io.baton.flow-id": claimed.flow.id,
        "io.baton.flow-name": claimed.flow.name,
        "io.baton.agent": "agent-7",
        "io.baton.tenant-id": "tenant-1",
    }


def test_the_agent_refuses_malformed_options_when_it_is_built(settings: BatonSettings, api: FakeApi) -> None:
    with pytest.raises(ConfigurationError, match="'data'"):
        DockerAgent(settings=settings, client=api, volumes=["data"])
    with pytest.raises(ConfigurationError, match="--network host"):
        DockerAgent(settings=settings, client=api, networks=["host", "back"])
    with pytest.raises(ConfigurationError, match="--docker-client-timeout"):
        DockerAgent(settings=settings, client=api, docker_client_timeout=0)


def test_the_agent_defaults(settings: BatonSettings, api: FakeApi) -> None:
    agent = DockerAgent(settings=settings, client=api)
    assert agent.agent_type == "docker"
    assert agent.driver.default_image.startswith("baton:")
    assert agent.driver.docker_client_timeout == 60
    assert agent.driver.registry_allow_list is None
    assert not agent.settings.agent.show_flow_logs
    assert DockerAgent(settings=settings, client=api, show_flow_logs=True).settings.agent.show_flow_logs


def test_docker_agent_is_exported_from_baton_agent() -> None:
    from baton.agent import DockerAgent as Exported

    assert Exported is DockerAgent


def test_the_run_configs_host_config_is_applied_over_the_agents_volumes_and_network(
    settings: BatonSettings, api: FakeApi
) -> None:
    agent = DockerAgent(settings=settings, client=api, volumes=["/srv/data:/data:ro"], networks=["front", "back"])
    docker_api = APIClient(version="1.41")  # an explicit version: nothing is asked of a daemon
    run_config = RunConfig(
        type="docker",
        host_config={"mem_limit": "64m", "auto_remove": True, "binds": ["/tmp:/scratch:rw"], "extra_hosts": {"a": "1"}},
    )

    host_config = agent.driver._host_config(docker_api, run_config, api_gateway=True)

    assert host_config["Memory"] == 64 * 1024 * 1024
    assert host_config.get("AutoRemove") is not True  # the agent removes containers after reading their exit
    assert host_config["Binds"] == ["/srv/data:/data:ro", "/tmp:/scratch:rw"]
    assert sorted(host_config["ExtraHosts"]) == ["a:1", "host.docker.internal:host-gateway"]
    assert host_config["NetworkMode"] == "front"
    docker_api.close()


def test_an_invalid_host_config_fails_the_deployment(settings: BatonSettings, api: FakeApi) -> None:
    agent = DockerAgent(settings=settings, client=api)
    docker_api = APIClient(version="1.41")

    with pytest.raises(DeploymentError, match=r"invalid host_config in the run config: .*memory_limit"):
        agent.driver._host_config(docker_api, RunConfig(type="docker", host_config={"memory_limit": "1g"}), False)
    docker_api.close()


def test_an_api_on_loopback_is_warned_about_unless_containers_share_the_hosts_network(
    settings: BatonSettings, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    settings.api.url = "http://127.0.0.1:4200"
    with caplog.at_level(logging.WARNING, logger="baton.agent"):
        DockerAgent(settings=settings, client=api)
    (warning,) = [r.getMessage() for r in caplog.records if "loopback" in r.getMessage()]
    assert "http://host.docker.internal:4200" in warning and "--network host" in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="baton.agent"):
        DockerAgent(settings=settings, client=api, networks=["host"])
        settings.api.url = "http://10.1.2.3:4200"
        DockerAgent(settings=settings, client=api)
    assert not [r for r in caplog.records if "loopback" in r.getMessage()]
