"""End-to-end fixtures: the real CLI, real local agents and real flow-run processes against a real server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_runner import run_cli
from support import ServerProcess, free_port, wait_for

pytestmark = pytest.mark.integration

BATON = [sys.executable, "-m", "baton.cli"]


class Cli:
    """Runs ``baton ...`` against one server (in-process where that is the same as a subprocess: ``cli_runner``)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = run_cli(args, self.server.env(**env), timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"baton {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


class AgentProcess:
    def __init__(self, process: subprocess.Popen[str], log: Path, address: str | None) -> None:
        self.process = process
        self.log_path = log
        self.address = address

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def cli(server: ServerProcess) -> Cli:
    return Cli(server)


@pytest.fixture
def start_agent(server: ServerProcess, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start ``baton agent local start`` subprocesses; every one is stopped after the test."""
    agents: list[AgentProcess] = []

    def start(
        *args: str,
        health: bool = False,
        hostname_label: bool = False,
        against: ServerProcess | None = None,
        **env: str,
    ) -> AgentProcess:
        """By default without the hostname label: an agent with labels never takes the unlabelled runs most
        tests create (DESIGN.md §4)."""
        log = tmp_path / f"agent-{len(agents)}.log"
        extra = list(args)
        if not hostname_label and "--no-hostname-label" not in extra:
            extra.append("--no-hostname-label")
        address = None
        if health:
            address = f"http://127.0.0.1:{free_port()}"
            extra += ["--agent-address", address]
        agent = launch_local_agent(against or server, log, ["--name", f"agent-{len(agents)}", *extra], address, env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop(signal.SIGTERM)
        if agent.process.poll() is None:
            agent.stop(signal.SIGINT)


def launch_local_agent(
    server: ServerProcess, log: Path, args: list[str], address: str | None, env: dict[str, str]
) -> AgentProcess:
    """``baton agent local start ARGS`` against ``server``, its output in ``log``."""
    command = [*BATON, "agent", "local", "start", *args]
    with log.open("w") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=server.env(**env), stdout=output, stderr=subprocess.STDOUT, text=True)
    return AgentProcess(process, log, address)


@pytest.fixture
def flow_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a flow module; returns its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / "flows" / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    return write


def wait_for_state(cli: Cli, run_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        run: dict[str, Any] = cli.server.client().get_flow_run(run_id).model_dump(mode="json")
        return run if run["state"] in states else None

    return wait_for(current, timeout=timeout, interval=0.1, what=f"run {run_id} to reach {states}")


def run_id_from(output: str) -> str:
    """`baton run` prints the run id first."""
    return output.strip().split()[0] if output.strip() else ""
