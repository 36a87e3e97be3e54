"""``baton docker build-image`` against the real daemon, and the image the Docker tests run flows in."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from baton import __version__
from baton.images import SOURCE_HASH_LABEL, source_hash
from docker_support import DockerCleanup, run_container
from support import REPO_ROOT


def test_build_image_makes_an_image_that_runs_the_engine(
    invoke: Any, docker_client: docker.DockerClient, docker_base_image: str, docker_cleanup: DockerCleanup
) -> None:
    tag = docker_cleanup.image(f"baton-test:{uuid.uuid4().hex[:12]}")
    expected_hash = source_hash(REPO_ROOT)

    result = invoke("docker", "build-image", "--tag", tag, "--source", str(REPO_ROOT), "--json")

    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["tag"] == tag
    assert "Step 1/" in result.stderr
    image = docker_client.images.get(tag)
    # The source may change while the build runs (someone editing the checkout): the label names what was built.
    assert image.labels[SOURCE_HASH_LABEL] == built["source_hash"]
    assert built["source_hash"] == expected_hash or built["source_hash"] == source_hash(REPO_ROOT)
    exit_code, output = run_container(docker_client, tag, ["python", "-m", "baton.engine", "--help"])
    assert exit_code == 0, output
    assert output.startswith("usage: python -m baton.engine")


def test_the_baton_image_has_baton_and_the_docker_sdk(docker_client: docker.DockerClient, baton_image: str) -> None:
    # The docker SDK and the kubernetes client: the image runs the Docker and Kubernetes agents too
    check = "import baton, docker, kubernetes; from baton.agent import KubernetesAgent; print(baton.__version__)"
    exit_code, output = run_container(docker_client, baton_image, ["python", "-c", check])

    assert exit_code == 0, output
    assert output.strip() == __version__
    assert docker_client.images.get(baton_image).labels[SOURCE_HASH_LABEL] == source_hash(REPO_ROOT)


def test_build_image_without_a_daemon_is_one_line_and_exit_3(invoke: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")

    result = invoke("docker", "build-image", "--source", str(REPO_ROOT))

    assert result.exit_code == 3
    assert result.stderr.startswith("Error: cannot reach the Docker daemon at unix:///nonexistent/docker.sock")
    assert result.stderr.count("\n") == 1


def test_build_image_without_the_docker_extra_says_what_to_install(
    invoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an install without the docker SDK (None in sys.modules: importing it fails as if it were missing)
    monkeypatch.setitem(sys.modules, "docker", None)

    result = invoke("docker", "build-image", "--source", str(REPO_ROOT))

    # Then one line that says which extra to install, not a traceback
    assert result.exit_code == 1
    assert "pip install 'baton[docker]'" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output + result.stderr


def test_build_image_failure_is_the_daemons_message_and_exit_1(
    invoke: Any, tmp_path: Path, docker_client: docker.DockerClient, docker_base_image: str
) -> None:
    # Given a checkout whose Dockerfile fails in its first step (nothing is committed, so no image is left)
    source = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO_ROOT / name, source / name)
    (source / ".cache").mkdir()
    (source / ".cache" / "wheels").symlink_to(REPO_ROOT / ".cache" / "wheels")  # offline: the wheels are cached
    (source / "Dockerfile").write_text(f"FROM {docker_base_image}\nRUN echo broken on purpose && exit 7\n")

    result = invoke("docker", "build-image", "--tag", f"baton-test:{uuid.uuid4().hex[:12]}", "--source", str(source))

    assert result.exit_code == 1, result.output
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: the image build failed:")
    assert "returned a non-zero code: 7" in error


@pytest.mark.parametrize("tag", ["Baton:1", "baton:", "baton::1", "-baton", "baton:ta g"])
def test_build_image_refuses_a_malformed_tag(invoke: Any, tag: str) -> None:
    result = invoke("docker", "build-image", "--tag", tag, "--source", str(REPO_ROOT))

    assert result.exit_code == 2
    assert "is not a valid image reference" in result.stderr


def test_build_image_outside_a_checkout_says_where_it_looked(invoke: Any, tmp_path: Path) -> None:
    result = invoke("docker", "build-image", "--source", str(tmp_path))

    assert result.exit_code == 2
    assert f"no Baton source tree at {tmp_path}" in result.stderr
