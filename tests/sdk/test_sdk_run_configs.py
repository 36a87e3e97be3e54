from __future__ import annotations

import pytest

from baton import DockerRun, KubernetesRun, LocalRun, UniversalRun
from baton.exceptions import InvalidLabelError
from baton.schemas.core import RunConfigType


def test_local_run_converts_with_working_dir_env_and_sorted_labels() -> None:
    schema = LocalRun(env={"A": 1}, working_dir="/srv/flows", labels=["b", "a", "b"]).to_schema()  # type: ignore[dict-item]
    assert schema.type == RunConfigType.LOCAL
    assert schema.env == {"A": "1"}
    assert schema.working_dir == "/srv/flows"
    assert schema.labels == ["a", "b"]


def test_universal_run_has_defaults() -> None:
    schema = UniversalRun().to_schema()
    assert (schema.type, schema.env, schema.labels, schema.image) == (RunConfigType.UNIVERSAL, {}, [], None)


def test_docker_run_takes_image_first_and_keeps_ports_and_host_config() -> None:
    schema = DockerRun("python:3.11-slim", ports=[8080], host_config={"mem_limit": "1g"}, labels=["docker"]).to_schema()
    assert schema.type == RunConfigType.DOCKER
    assert schema.image == "python:3.11-slim"
    assert schema.ports == [8080]
    assert schema.host_config == {"mem_limit": "1g"}
    assert schema.labels == ["docker"]


def test_kubernetes_run_keeps_every_field() -> None:
    template = {"apiVersion": "batch/v1", "kind": "Job"}
    schema = KubernetesRun(
        job_template=template,
        image="repo/flows:1",
        cpu_request="500m",
        cpu_limit="1",
        memory_request="256Mi",
        memory_limit="1Gi",
        service_account_name="runner",
        image_pull_secrets=["regcred"],
        image_pull_policy="Always",
    ).to_schema()
    assert schema.type == RunConfigType.KUBERNETES
    assert schema.job_template == template
    assert (schema.cpu_request, schema.cpu_limit, schema.memory_request, schema.memory_limit) == (
        "500m",
        "1",
        "256Mi",
        "1Gi",
    )
    assert (schema.service_account_name, schema.image_pull_secrets, schema.image_pull_policy) == (
        "runner",
        ["regcred"],
        "Always",
    )


def test_invalid_label_in_a_run_config_is_refused() -> None:
    with pytest.raises(InvalidLabelError):
        UniversalRun(labels=["a,b"]).to_schema()
