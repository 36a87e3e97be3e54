"""Fixtures shared by every test package: real API servers on 127.0.0.1 with a throwaway $BATON_HOME, and the
real Docker daemon with the images the Docker agent runs (see ``docker_support``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from baton.client import Client
from server_zygote import Zygote
from shared_servers import SharedServers
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
KUBERNETES = "tests/agent/test_kubernetes.py"
# The longest units go first, so that the last ones handed out are short and the workers finish together (with
# xdist's own order, by number of tests, the Kubernetes file and the reliability group ran last, alone, for ~7 min).
# Seconds measured with BATON_TEST_TIMELINE on 4 workers, 2 cores (2026-12-05); the other units follow in xdist's order.
LONGEST_FIRST = {
    KUBERNETES: 104,
    "tests/server/api/test_fuzz.py": 68,
    LOAD_GROUP: 56,
    "tests/agent/test_docker.py": 53,
    "tests/server/api/test_notifications.py": 31,
    "tests/ui/test_browser.py": 24,
    "tests/security/test_log_loss.py": 23,
    "tests/server/api/test_isolation.py": 22,
    "tests/server/models/test_claims.py": 19,
    "tests/server/services/test_leases.py": 17,
    "tests/integration/test_failures.py": 17,
    "tests/server/services/test_recovery.py": 15,
    # Prefect 1's CLI, agents and flow runner (issue 13): seconds per run; estimated from --durations (2026-12-05).
    "tests/prefect1/test_runs_agents.py": 75,
    "tests/prefect1/test_runs.py": 60,
    "tests/prefect1/test_runs_executors.py": 60,
    "tests/prefect1/test_docker.py": 50,
    "tests/engine/test_engine_dask.py": 25,
}
K8S_CACHE = Path(os.environ.get("BATON_K8S_CACHE", "/var/cache/baton-kubernetes"))


def _kubernetes_binaries_ready() -> bool:
    """Whether the cluster's binaries are built and no build is running (.ci/run builds them in the background)."""
    if not (K8S_CACHE / "bin" / ".stamp").exists():
        return False
    try:
        builder = int((K8S_CACHE / "ci-build.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        return True
    return builder <= 0 or not Path(f"/proc/{builder}").exists()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):  # type: ignore[misc]
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return LOAD_GROUP if path.startswith(LOAD_GROUP + "/") else path

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the queue is complete before the first unit is handed out
                self.ordered = True
                weights = dict(LONGEST_FIRST)
                if not _kubernetes_binaries_ready():
                    weights[KUBERNETES] = -1  # last: its binaries may still be building (its tests wait for them)
                units = list(self.workqueue.items())
                units.sort(key=lambda unit: -weights.get(unit[0], 0))  # stable: the rest keep xdist's order
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


# BATON_TEST_TIMELINE=FILE: each test's start, end, worker and the worker's CPU, one JSON line each (where the suite's
# time goes).
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    path = os.environ.get("BATON_TEST_TIMELINE")
    started, cpu = time.time(), time.process_time()
    yield
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        cpu = time.process_time() - cpu  # the worker's own CPU (not its servers' or other children's)
        line = json.dumps({"test": item.nodeid, "worker": worker, "start": started, "end": time.time(), "cpu": cpu})
        with open(path, "a") as timeline:
            timeline.write(line + "\n")


@pytest.fixture(scope="session", autouse=True)
def _server_zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """This worker's servers are forked from a process that has imported the server (``tests/server_zygote.py``):
    ~0.8 s of CPU less per server. Set up first and torn down last, after the servers it forked."""
    zygote = Zygote(tmp_path_factory.mktemp("server-zygote"))
    ServerProcess.zygote = zygote
    yield
    ServerProcess.zygote = None
    zygote.close()


@pytest.fixture(scope="session")
def _empty_baton_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-baton-home")


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(_empty_baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's ~/.baton or BATON__ settings: settings loaded in the test process (an agent a
    test builds, a client) took their tenant, key or URL from there (a ~/.baton/config.toml left by a server started
    by hand failed the Docker policy tests with a tenant mismatch). Tests that need a home of their own take
    ``baton_home``; other BATON_ variables (the test knobs) are left alone."""
    for name in list(os.environ):
        if name.startswith("BATON__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BATON_HOME", str(_empty_baton_home))


@pytest.fixture
def baton_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "baton-home"
    home.mkdir()
    monkeypatch.setenv("BATON_HOME", str(home))  # and no BATON__ variables: _no_settings_from_the_shell
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


@pytest.fixture(scope="session")
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServers]:
    """This worker's shared servers, one per database (``tests/shared_servers.py``); tests take a tenant of their
    own on them (``tests/server/conftest.py``)."""
    servers = SharedServers(tmp_path_factory)
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def shared_postgres_server(postgres_cluster: Any, shared_servers: SharedServers) -> Iterator[Any]:
    """The cluster of the shared PostgreSQL server (``SharedServers.get``), which it stops before the cluster."""
    yield postgres_cluster
    shared_servers.stop("postgresql")


@pytest.fixture
def server(shared_servers: SharedServers, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A tenant of its own on this worker's shared SQLite server (``support.TenantServer``), seen as a server of the
    test's own. A test that stops, kills or restarts its server, reads its log or needs settings of its own starts
    one with ``start_server``."""
    view = shared_servers.tenant(request, tmp_path / "tenant-home")
    yield view
    view.close()


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
