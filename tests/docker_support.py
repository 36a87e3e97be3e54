"""Docker helpers of the test suite: the daemon (skipped locally when absent, a failure under ``CI=true``), the
base and ``baton:<version>`` images (made once, reused across sessions), and containers that are always removed.

The fixtures built on these live in ``tests/conftest.py``: ``docker_client``, ``docker_base_image``,
``baton_image`` (session) and ``docker_cleanup`` (per test).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

import docker
import pytest
from docker.errors import APIError, NotFound

from baton import images
from support import REPO_ROOT

BASE_IMAGE = images.BASE_IMAGE
BATON_IMAGE = images.DEFAULT_TAG
BASE_IMAGE_SCRIPT = REPO_ROOT / "scripts" / "docker" / "base-image.sh"
# Serialises the making of the base image by concurrent test sessions (two people running pytest at once);
# builds of the baton image take turns on a lock of their own (baton.images.build_lock).
BASE_LOCK_PATH = REPO_ROOT / ".cache" / "base-image.lock"

Say = Callable[[str], None]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``; under ``CI=true`` fail it instead: there, the Docker tests must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the Docker tests must run)", pytrace=False)
    pytest.skip(reason)


def connect_or_skip() -> docker.DockerClient:
    """A client of the daemon the environment names (``DOCKER_HOST``, else the local socket), or skip/fail."""
    try:
        return images.connect()
    except images.DockerUnavailableError as exc:
        skip_or_fail(f"{exc}; start one with scripts/docker/start-dockerd.sh")


@contextmanager
def base_image_lock() -> Iterator[None]:
    BASE_LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with BASE_LOCK_PATH.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def paused_test_timeout() -> Iterator[None]:
    """Stop pytest-timeout's clock (signal method) while images are made: a cold build (~50 s with the base
    image) is paid by whichever test asks first, and must not eat that test's own time budget."""
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    if remaining:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining, interval)


def image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base_image(client: docker.DockerClient, say: Say, tag: str = BASE_IMAGE) -> str:
    """``tag`` in the local daemon: kept when it exists, else made by ``scripts/docker/base-image.sh``."""
    with paused_test_timeout(), base_image_lock():
        if not image_exists(client, tag):
            _make_base_image(tag, say)
    return tag


def _make_base_image(tag: str, say: Say) -> None:
    if shutil.which("mmdebstrap") is None:
        skip_or_fail(f"no {tag} image in the Docker daemon and no mmdebstrap to make it (apt-get install mmdebstrap)")
    say(f"Docker tests: making the base image {tag} with {BASE_IMAGE_SCRIPT.relative_to(REPO_ROOT)} (~30 s)")
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(BASE_IMAGE_SCRIPT), tag], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode:
        output = (result.stdout + result.stderr).strip().splitlines()
        pytest.fail(f"{BASE_IMAGE_SCRIPT.name} failed ({result.returncode}):\n" + "\n".join(output[-30:]))
    say(f"Docker tests: base image {tag} made in {time.monotonic() - start:.0f} s")


def ensure_baton_image(client: docker.DockerClient, say: Say, tag: str = BATON_IMAGE) -> str:
    """``tag`` built from this checkout: the existing image when its ``io.baton.source-hash`` label matches the
    source, else built now (base image first). Returns the tag."""
    ensure_base_image(client, say)
    if images.find_image(client, tag, images.source_hash(REPO_ROOT)) is not None:
        return tag
    start = time.monotonic()

    def progress(line: str) -> None:
        if not line.startswith("Step "):
            say(f"Docker tests: {line}")

    with paused_test_timeout():
        try:
            built = images.ensure_image(client, REPO_ROOT, tag, progress=progress)
        except images.ImageBuildError as exc:
            pytest.fail(f"cannot build {tag} for the Docker tests: {exc}", pytrace=False)
    if built.built:
        say(f"Docker tests: {tag} built in {time.monotonic() - start:.0f} s ({built.size / 1e6:.0f} MB)")
    return tag


def run_container(
    client: docker.DockerClient, image: str, command: list[str], *, timeout: float = 60, **create: Any
) -> tuple[int, str]:
    """Run ``command`` in a new container of ``image`` (host network unless given) and remove the container.

    Returns:
        The exit code and the output (stdout and stderr).
    """
    create.setdefault("network_mode", "host")
    container = client.containers.create(image, command, **create)
    try:
        container.start()
        status = container.wait(timeout=timeout)
        return int(status["StatusCode"]), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True, v=True)


class DockerCleanup:
    """What a test created in Docker, removed when the test ends, pass or fail (newest first)."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._removals: list[tuple[str, Callable[[], object]]] = []

    def container(self, id_or_name: str) -> str:
        self._removals.append(
            (f"container {id_or_name}", lambda: self.client.api.remove_container(id_or_name, force=True, v=True))
        )
        return id_or_name

    def containers_labelled(self, label: str) -> str:
        """Every container with ``label`` (``key`` or ``key=value``), e.g. a flow run's ``io.baton.flow-run-id``."""

        def remove() -> None:
            for found in self.client.containers.list(all=True, filters={"label": label}, sparse=True):
                with suppress(NotFound):
                    found.remove(force=True, v=True)

        self._removals.append((f"containers labelled {label}", remove))
        return label

    def image(self, name: str) -> str:
        self._removals.append((f"image {name}", lambda: self.client.images.remove(name, force=True)))
        return name

    def volume(self, name: str) -> str:
        self._removals.append((f"volume {name}", lambda: self.client.api.remove_volume(name, force=True)))
        return name

    def network(self, name: str) -> str:
        self._removals.append((f"network {name}", lambda: self.client.api.remove_network(name)))
        return name

    def run(self) -> list[str]:
        """Remove everything registered; returns what could not be removed (already gone is fine)."""
        problems: list[str] = []
        for what, remove in reversed(self._removals):
            try:
                remove()
            except NotFound:
                pass
            except APIError as exc:
                problems.append(f"{what}: {exc.explanation or exc}")
        self._removals.clear()
        return problems
