"""The local agent: each flow run is a ``python -m baton.engine`` process on this host.

Each process gets its own session (so its own process group): a cancel or a cold stop kills the whole group, the
run's child processes included, and a Ctrl-C in the agent's terminal does not reach it.

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev"], import_paths=["/srv/flows"], show_flow_logs=True).start()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, ClassVar, Unpack

from baton.agent.base import Agent, AgentOptions
from baton.agent.env import without_case_variants
from baton.agent.runs import Deployment
from baton.exceptions import DeploymentError
from baton.labels import hostname_label
from baton.schemas.core import RunConfigType
from baton.schemas.responses import ClaimedRun

_RUN_CONFIG_TYPES = {RunConfigType.LOCAL, RunConfigType.UNIVERSAL}


def exit_code_of(returncode: int) -> int:
    """A Popen return code as a shell reports it: killed by signal N (``-N``) -> ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


def _stream_output(pipe: IO[str], prefix: str) -> None:
    """Copy a flow-run process's output to the agent's stdout, each line prefixed by the run's name."""
    with pipe:
        for line in pipe:
            text = line if line.endswith("\n") else line + "\n"
            sys.stdout.write(prefix + text)
            sys.stdout.flush()


def _has_exited(process: subprocess.Popen[str]) -> bool:
    """Whether the process has exited, without reaping it (its pid stays reserved for us as a zombie)."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped meanwhile by something other than this Popen
        process.poll()  # on ECHILD it sets a returncode: the pid is not ours any more
        return True


def _signal_group(pid: int, signum: int) -> None:
    # The process leads its own session, so its group id is its pid; a missing group has ended already.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


class LocalAgent(Agent):
    """Deploys flow runs as local subprocesses. See :class:`baton.agent.base.Agent` for the common options.

    Args:
        import_paths: prepended to the runs' ``PYTHONPATH`` (``-p/--import-path``).
        show_flow_logs: stream the runs' output to the agent's stdout, prefixed by the run name
            (default: discard it).
        hostname_label: add this host's name to the agent's labels (default True).
    """

    agent_type: ClassVar[str] = "local"

    def __init__(
        self,
        *,
        import_paths: list[str] | None = None,
        show_flow_logs: bool | None = None,
        hostname_label: bool | None = None,
        **options: Unpack[AgentOptions],
    ) -> None:
        super().__init__(
            agent_overrides={
                "import_paths": import_paths,
                "show_flow_logs": show_flow_logs,
                "hostname_label": hostname_label,
            },
            **options,
        )

    def extra_labels(self) -> list[str]:
        return [hostname_label()] if self.settings.agent.hostname_label else []

    def command(self, claimed: ClaimedRun) -> list[str]:
        """The flow-run process's command line: the engine, run by this agent's Python."""
        return [sys.executable, "-m", "baton.engine"]

    def process_env(self, run_env: dict[str, str]) -> dict[str, str]:
        """This process's environment under the run's, with the import paths in front of ``PYTHONPATH``.

        Case-variants of the run's ``BATON_`` names in this process's environment are left out: the engine reads
        its settings case-insensitively, and they must not compete with the run's values.
        """
        env = {**without_case_variants(os.environ), **run_env}
        paths = [os.path.abspath(path) for path in self.settings.agent.import_paths]
        if paths:
            existing = env.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join([*paths, existing] if existing else paths)
        return env

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        run_config = claimed.flow_run.run_config
        if run_config.type not in _RUN_CONFIG_TYPES:
            raise DeploymentError(
                f"the local agent runs only local and universal run configs; this run's is {run_config.type.value}"
            )
        cwd = run_config.working_dir
        if cwd and not os.path.isdir(cwd):
            raise DeploymentError(f"working directory {cwd!r} does not exist on {hostname_label()}")
        process = await asyncio.to_thread(self._popen, claimed, self.process_env(env), cwd)
        return Deployment(
            message=f"PID: {process.pid}", data={"pid": process.pid, "host": hostname_label()}, handle=process
        )

    def _popen(self, claimed: ClaimedRun, env: dict[str, str], cwd: str | None) -> subprocess.Popen[str]:
        show = self.settings.agent.show_flow_logs
        try:
            process = subprocess.Popen(
                self.command(claimed),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if show else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if show else subprocess.DEVNULL,
                start_new_session=True,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise DeploymentError(f"cannot start the flow-run process: {exc}") from exc
        if show and process.stdout is not None:
            prefix = f"[{claimed.flow_run.name}] "
            threading.Thread(
                target=_stream_output, args=(process.stdout, prefix), name=f"baton-output-{process.pid}", daemon=True
            ).start()
        return process

    async def inspect(self, deployment: Deployment) -> int | None:
        process: subprocess.Popen[str] = deployment.handle
        returncode = process.poll()
        return None if returncode is None else exit_code_of(returncode)

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        process: subprocess.Popen[str] = deployment.handle
        # Once reaped, the pid is free: the kernel may have given it (and so the group id) to another process.
        # Until then it is ours, even as a zombie, so the group signals below reach only the run's processes.
        if process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while not _has_exited(process) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Also when the leader obeyed: children it left behind in its group must not outlive the run.
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGKILL)
        while process.poll() is None:
            await asyncio.sleep(0.02)

    def detach(self, deployment: Deployment) -> None:
        process: subprocess.Popen[str] = deployment.handle
        # Reap it when it ends, so it leaves no zombie behind in an agent process that lives on.
        threading.Thread(target=process.wait, name=f"baton-reap-{process.pid}", daemon=True).start()
