"""Fixtures shared by every test package: real API servers on 127.0.0.1 with a throwaway $BATON_HOME, and the
real Docker daemon with the images the Docker agent runs (see ``docker_support``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from baton.client import Client
from support import ServerProcess

if TYPE_CHECKING:
    import docker

    from docker_support import DockerCleanup


# --- Parallel runs ------------------------------------------------------------------------------
# `make test` runs the suite on pytest-xdist workers. Each file is one unit of work (its module-scoped servers start
# once), except the load-like tests of tests/reliability: they are one unit, so they run one after another on one
# worker and never load the machine at the same time as each other. (xdist's own `loadgroup` marks do not take
# effect with pytest 9, so the grouping is this scheduler.)
LOAD_GROUP = "tests/reliability"
# Scheduled last: under .ci/run its cluster's binaries may still be building in the background when the suite starts.
LAST = "tests/agent/test_kubernetes.py"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndReliability(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return LOAD_GROUP if path.startswith(LOAD_GROUP + "/") else path

        def schedule(self) -> None:
            super().schedule()
            if LAST in self.workqueue:  # not handed out yet (the first units are the biggest files)
                self.workqueue.move_to_end(LAST)

    return FilesAndReliability(config, log)


@pytest.fixture
def baton_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "baton-home"
    home.mkdir()
    monkeypatch.setenv("BATON_HOME", str(home))
    for name in list(__import__("os").environ):
        if name.startswith("BATON__"):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with settings given as env (e.g. ``BATON__SERVER__CLAIM_LEASE_SECONDS="1"``)."""
    started: list[ServerProcess] = []

    def start(home: Path | None = None, **settings_env: str) -> ServerProcess:
        server = ServerProcess(home or tmp_path / f"server-home-{len(started)}", **settings_env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[Client]:
    with server.client() as client:
        yield client


# --- Docker -------------------------------------------------------------------------------------
# docker_support is imported inside the fixtures, so that test runs without Docker tests never import the SDK.


def _say(config: pytest.Config) -> Callable[[str], None]:
    """Write a line on pytest's terminal (image builds take tens of seconds: say why a test is slow to start)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.write_line if reporter is not None else (lambda line: None)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[object]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (``create_database()`` gives a fresh database's URL); skips
    with a reason when no PostgreSQL binaries exist, fails under ``CI=true``."""
    from postgres_support import PostgresCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl, postgres): apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the Docker daemon the environment names; skips the test when none answers (fails under CI=true)."""
    from docker_support import connect_or_skip

    client = connect_or_skip()
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_base_image(docker_client: docker.DockerClient, pytestconfig: pytest.Config) -> str:
    """``python:3.11-slim`` in the daemon (made with scripts/docker/base-image.sh when missing); the tag.
    Shared infrastructure: kept after the session."""
    from docker_support import ensure_base_image

    return ensure_base_image(docker_client, _say(pytestconfig))


@pytest.fixture(scope="session")
def baton_image(docker_client: docker.DockerClient, pytestconfig: pytest.Config) -> str:
    """``baton:<version>`` built from this checkout's source and Dockerfile, once per session and reused across
    sessions while its ``io.baton.source-hash`` label matches src/ + pyproject.toml + Dockerfile; the tag.
    Shared infrastructure: kept after the session."""
    from docker_support import ensure_baton_image

    return ensure_baton_image(docker_client, _say(pytestconfig))


@pytest.fixture
def docker_cleanup(docker_client: docker.DockerClient) -> Iterator[DockerCleanup]:
    """Register what a test creates (``.container(id)``, ``.containers_labelled(label)``, ``.image(tag)``,
    ``.volume(name)``, ``.network(name)``); all of it is removed when the test ends, pass or fail."""
    from docker_support import DockerCleanup

    cleanup = DockerCleanup(docker_client)
    yield cleanup
    problems = cleanup.run()
    assert not problems, f"Docker objects the test created could not be removed: {problems}"
