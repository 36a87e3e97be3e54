"""Fixtures for the engine tests: a tenant of the shared API server per module, and a launcher that does what an
agent does (claim a run with a runner key, start ``python -m baton.engine`` with the run's environment, post
Submitted)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from baton.client import Client
from baton.schemas.responses import ClaimedRun, FlowRunRead, LogRead, TaskRunRead
from baton.sdk.registration import build_flow_payload, load_flows
from shared_servers import SharedServers
from support import ServerProcess, clean_env, wait_for

# Fast loops, so that cancellation and log shipping are seen within a fraction of a second.
FAST_ENGINE_ENV = {
    "BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS": "0.2",
    "BATON__LOGGING__BATCH_INTERVAL_SECONDS": "0.1",
}


@pytest.fixture(scope="module")
def engine_server(
    shared_servers: SharedServers, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A tenant of its own on this worker's shared SQLite server, for the module's tests."""
    server = shared_servers.tenant(request, tmp_path_factory.mktemp("engine-server-home"))
    yield server
    server.close()


@dataclass
class EngineProcess:
    """A running ``python -m baton.engine`` and the run it runs."""

    process: subprocess.Popen[str]
    claimed: ClaimedRun
    admin: Client
    output: tuple[str, str] = ("", "")

    @property
    def run_id(self) -> str:
        return self.claimed.flow_run.id

    def wait(self, timeout: float = 60) -> int:
        self.output = self.process.communicate(timeout=timeout)
        return self.process.returncode

    @property
    def stdout(self) -> str:
        return self.output[0]

    @property
    def stderr(self) -> str:
        return self.output[1]

    def run(self) -> FlowRunRead:
        return self.admin.get_flow_run(self.run_id)

    def task_runs(self) -> list[TaskRunRead]:
        return sorted(self.admin.list_task_runs(self.run_id), key=lambda task_run: task_run.created)

    def logs(self) -> list[LogRead]:
        return self.admin.get_logs(self.run_id).logs

    def wait_for_state(self, *states: str, timeout: float = 20) -> FlowRunRead:
        def reached() -> FlowRunRead | None:
            run = self.run()
            return run if run.state in states else None

        run = wait_for(reached, timeout=timeout, what=f"run to reach {states}")
        assert run is not None
        return run


@dataclass
class Launcher:
    """Registers flows, creates and claims runs, and starts engine processes like a local agent would."""

    server: ServerProcess
    tmp_path: Path
    admin: Client
    runner: Client
    started: list[EngineProcess] = field(default_factory=list)

    def write_flow(self, name: str, source: str) -> Path:
        path = self.tmp_path / "flows" / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    def register(self, path: Path, storage: str = "api") -> list[str]:
        flows = load_flows(path)
        return [self.admin.register_flow(build_flow_payload(f, path, storage=storage)).name for f in flows]

    def claim(
        self, flow_name: str, parameters: dict[str, Any] | None = None, executor: str | None = None
    ) -> ClaimedRun:
        # A label of its own per run, and an agent with exactly that label (DESIGN.md §4): a run left over by
        # another test can never be claimed here.
        label = f"engine-test-{uuid.uuid4().hex[:12]}"
        run = self.admin.create_flow_run(
            flow_name=flow_name, parameters=parameters or {}, labels=[label], executor=executor
        )
        agent = self.runner.register_agent(label, "local", [label])
        claimed = self.runner.claim(agent.id, limit=1, wait_seconds=5).runs
        assert [c.flow_run.id for c in claimed] == [run.id]
        return claimed[0]

    def start(
        self, claimed: ClaimedRun, *args: str, submit: bool = True, submit_delay: float = 0.0, **env: str
    ) -> EngineProcess:
        home = self.tmp_path / "engine-home"  # not the server's home: its config.toml holds the admin key
        home.mkdir(exist_ok=True)
        engine_env = clean_env(
            home,
            BATON__API__URL=self.server.url,
            BATON__API__KEY=claimed.run_token,
            BATON_FLOW_RUN_ID=claimed.flow_run.id,
            BATON_FLOW_ID=claimed.flow.id,
            BATON_TENANT_ID="tenant-under-test",
            **{**FAST_ENGINE_ENV, **env},
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "baton.engine", *args],
            env=engine_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if submit:
            self._submit(claimed, process.pid, submit_delay)
        engine = EngineProcess(process, claimed, self.admin)
        self.started.append(engine)
        return engine

    def _submit(self, claimed: ClaimedRun, pid: int, delay: float) -> None:
        def post() -> None:
            time.sleep(delay)
            self.runner.set_flow_run_state(claimed.flow_run.id, "Submitted", f"PID: {pid}", {"pid": pid})

        if delay:
            threading.Thread(target=post, daemon=True).start()
        else:
            post()

    def run_flow(self, source: str, flow_name: str, parameters: dict[str, Any] | None = None) -> EngineProcess:
        """Register ``source``, run ``flow_name`` in an engine process and wait for it to exit."""
        self.register(self.write_flow(flow_name, source))
        engine = self.start(self.claim(flow_name, parameters))
        engine.wait()
        return engine


@pytest.fixture
def launcher(engine_server: ServerProcess, tmp_path: Path) -> Iterator[Launcher]:
    with engine_server.client() as admin:
        runner_key = admin.create_api_key("runner", "engine-tests").key
        with Client(engine_server.url, runner_key) as runner:
            launched = Launcher(engine_server, tmp_path, admin, runner)
            yield launched
            for engine in launched.started:
                if engine.process.poll() is None:
                    engine.process.kill()
                if engine.process.stdout is not None and not engine.process.stdout.closed:
                    engine.process.communicate()  # closes its pipes: an exited process's too
