"""Helpers of the local agent's security tests (items 2 and 9 of issue 8): a throwaway OS user, a Python that user
can run, a real local agent started as a subprocess with a given environment, and a flow that hunts for keys.

Imported explicitly by ``test_agent_key_exposure.py`` and ``test_run_timeout.py``.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.client import Client
from baton.sdk.registration import build_flow_payload, load_flows
from integration.conftest import AgentProcess
from support import ServerProcess, wait_for

FINAL_STATES = {"Success", "Failed", "Cancelled", "Crashed"}


def require_root(why: str) -> None:
    """Skip the test when this process is not root (fail under ``CI=true``, where we are)."""
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        return
    reason = f"needs root on Linux: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def flow_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway system user without a home directory, removed after the test."""
    require_root("it creates an OS user to run flows as")
    name = f"baton-flowtest-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def open_dir() -> Path:
    """A fresh directory under /tmp that every user may enter (0755): only the modes of the files in it protect
    them, as in a real ``$BATON_HOME`` or ``/etc/baton``. The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix="baton-sec-", dir="/tmp"))
    path.chmod(0o755)
    return path


def _runs_baton(python: str, user: pwd.struct_passwd) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import baton.engine"], user=user.pw_uid, group=user.pw_gid, cwd="/", capture_output=True
        )
    except OSError:
        return False
    return result.returncode == 0


def python_for(user: pwd.struct_passwd, workspace: Path) -> str:
    """A Python with Baton that ``user`` can run: this one, or else a virtualenv of the system's Python of the
    same version (in ``workspace``) that reads this environment's packages.

    The agent runs flows with its own interpreter; this test environment's lives under /root (0700), which no
    other user can enter: an operator would install Baton where the flows' user can read it.
    """
    if _runs_baton(sys.executable, user):
        return sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin:/bin")
    reason = f"no Python {version} that {user.pw_name} can run with Baton"
    if system is None:
        pytest.skip(reason)
    venv = workspace / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site_packages = venv / "lib" / f"python{version}" / "site-packages"
    purelib = sysconfig.get_paths()["purelib"]
    (site_packages / "baton-test.pth").write_text(f"import site; site.addsitedir({purelib!r})\n")
    python = str(venv / "bin" / "python")
    if not _runs_baton(python, user):
        pytest.skip(reason)
    return python


def agent_environment(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """A local agent's environment: this one without BATON settings, its own ``$BATON_HOME``, and ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("BATON")}
    env.update({"BATON_HOME": str(home), "BATON__API__URL": api_url, "PYTHONUNBUFFERED": "1", **extra})
    return env


def start_agent(
    python: str, args: list[str], env: dict[str, str], log: Path, user: pwd.struct_passwd | None = None
) -> AgentProcess:
    """``baton agent local start ARGS`` run by ``python`` (as ``user``: None, this process's), without the
    hostname label (it takes unlabelled runs)."""
    command = [python, "-m", "baton.cli", "agent", "local", "start", "--no-hostname-label", *args]
    switch: dict[str, Any] = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "cwd": "/"}
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True, **switch)
    return AgentProcess(process, log, None)


def stop_agent(agent: AgentProcess) -> None:
    agent.stop(signal.SIGTERM)
    if agent.process.poll() is None:
        agent.stop(signal.SIGINT)


def register_flow_file(client: Client, path: Path, source: str) -> str:
    """Write ``source`` to ``path`` and register its flow the way ``baton register`` does (the SDK's payload,
    storage api); return the flow's name."""
    path.write_text(source)
    [flow] = load_flows(path)
    client.register_flow(build_flow_payload(flow, path, storage="api"))
    return flow.name


def wait_for_end(server: ServerProcess, run_id: str, agent: AgentProcess, timeout: float = 60) -> Any:
    def ended() -> Any:
        if agent.process.poll() is not None:
            raise AssertionError(f"the agent exited with {agent.process.returncode}:\n{agent.log()}")
        run = server.client().get_flow_run(run_id)
        return run if run.state in FINAL_STATES else None

    return wait_for(ended, timeout=timeout, interval=0.1, what=f"run {run_id} to end; agent log:\n{agent.log()}")


def read_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report
