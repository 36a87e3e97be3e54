"""The local agent's process handling, with real subprocesses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from baton.agent.base import Agent
from baton.agent.driver import Deployment
from baton.agent.local import LocalAgent, LocalDriver, LocalOptions, exit_code_of
from baton.backoff import Backoff
from baton.exceptions import DeploymentError
from baton.labels import hostname_label
from baton.schemas.core import Storage
from baton.schemas.responses import ClaimedRun
from baton.settings import BatonSettings

from .conftest import AgentThread
from .fake_api import FakeApi


class ScriptDriver(LocalDriver):
    """A local driver whose flow-run process is a small Python script instead of the engine."""

    script = "pass"

    def command(self, claimed: ClaimedRun) -> list[str]:
        return [sys.executable, "-c", self.script]


class ScriptAgent(Agent):
    driver: ScriptDriver


@pytest.fixture
def make_local(settings: BatonSettings, api: FakeApi) -> Callable[..., ScriptAgent]:
    def _make(script: str = "pass", **options: Any) -> ScriptAgent:
        options.setdefault("settings", settings)
        options.setdefault("client", api)
        local = {name: options.pop(name) for name in LocalOptions.model_fields if name in options}
        driver = ScriptDriver(LocalOptions(**local))
        driver.script = script
        agent = ScriptAgent(driver, **options)
        agent.watch_interval_seconds = 0.05
        agent.policy.backoff = Backoff(0.01, 0.05)
        return agent

    return _make


def claimed(api: FakeApi, **run_config: Any) -> ClaimedRun:
    run_id = api.add_run(**run_config)
    return api.claimed_run(api.runs[run_id])


def deploy(agent: ScriptAgent, run: ClaimedRun, env: dict[str, str] | None = None) -> Deployment:
    return asyncio.run(agent.driver.deploy(run, env or {}))


def wait_exit(agent: LocalAgent, deployment: Deployment, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = asyncio.run(agent.driver.inspect(deployment))
        if code is not None:
            return code
        time.sleep(0.02)
    raise TimeoutError("the process did not end")


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (gone, or a zombie waiting for a parent that is not us)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_flow_run_process_is_the_engine_run_by_this_python(settings: BatonSettings, api: FakeApi) -> None:
    agent = LocalAgent(settings=settings, client=api)
    assert agent.driver.command(claimed(api)) == [sys.executable, "-m", "baton.engine"]


@pytest.mark.parametrize(("returncode", "exit_code"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_exit_codes_are_reported_as_a_shell_would(returncode: int, exit_code: int) -> None:
    assert exit_code_of(returncode) == exit_code


def test_a_process_exit_code_is_reported(make_local: Callable[..., ScriptAgent], api: FakeApi) -> None:
    agent = make_local("import sys; sys.exit(3)")
    deployment = deploy(agent, claimed(api))
    assert deployment.message == f"PID: {deployment.data['pid']}"
    assert wait_exit(agent, deployment) == 3


def test_a_process_killed_by_sigkill_reports_137(make_local: Callable[..., ScriptAgent], api: FakeApi) -> None:
    agent = make_local("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert wait_exit(agent, deploy(agent, claimed(api))) == 137


def test_kill_stops_the_whole_process_group(
    make_local: Callable[..., ScriptAgent], api: FakeApi, tmp_path: Path
) -> None:
    # Given a flow-run process that started a child of its own
    child_pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    agent = make_local(script)
    deployment = deploy(agent, claimed(api))
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() or not child_pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    child_pid = int(child_pid_file.read_text())

    # When the agent kills the deployment
    asyncio.run(agent.driver.kill(deployment, grace_seconds=5))

    # Then the process and its child are gone
    assert wait_exit(agent, deployment) == 143
    deadline = time.monotonic() + 5
    while not process_gone(child_pid):
        assert time.monotonic() < deadline, "the child outlived the kill"
        time.sleep(0.02)


def test_kill_escalates_to_sigkill_after_the_grace_period(
    make_local: Callable[..., ScriptAgent], api: FakeApi, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    agent = make_local(script)
    deployment = deploy(agent, claimed(api))
    while not ready.exists():
        time.sleep(0.02)

    started = time.monotonic()
    asyncio.run(agent.driver.kill(deployment, grace_seconds=0.5))

    assert time.monotonic() - started >= 0.5
    assert wait_exit(agent, deployment) == 137


def test_a_missing_working_dir_fails_the_deployment_naming_it(
    make_local: Callable[..., ScriptAgent], api: FakeApi, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir"
    agent = make_local()
    with pytest.raises(DeploymentError, match=str(missing)):
        deploy(agent, claimed(api, type="local", working_dir=str(missing)))


def test_a_run_config_of_another_platform_is_refused(make_local: Callable[..., ScriptAgent], api: FakeApi) -> None:
    with pytest.raises(DeploymentError, match="docker"):
        deploy(make_local(), claimed(api, type="docker", image="python:3.11"))


def test_a_flow_whose_code_is_in_an_image_is_refused_naming_the_agents_that_run_it(
    make_local: Callable[..., ScriptAgent], api: FakeApi
) -> None:
    run = claimed(api, type="universal")
    run.flow.storage = Storage(type="docker", image="flows:1", path="/opt/flows/etl.py")
    with pytest.raises(DeploymentError, match=r"storage docker.*a docker or kubernetes agent runs it"):
        deploy(make_local(), run)


def test_process_gets_working_dir_env_and_import_paths(
    make_local: Callable[..., ScriptAgent], api: FakeApi, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = (
        "import json, os, sys\n"
        f"json.dump({{'cwd': os.getcwd(), 'env': dict(os.environ), 'path': sys.path}}, open({str(out)!r}, 'w'))\n"
    )
    agent = make_local(script, import_paths=[str(tmp_path / "lib1"), str(tmp_path / "lib2")])
    run = claimed(api, type="local", working_dir=str(workdir), env={"FROM_RUN": "1"})

    deployment = deploy(agent, run, env={"BATON_FLOW_RUN_ID": run.flow_run.id, "PATH": "/from/run/env"})
    assert wait_exit(agent, deployment) == 0

    seen = json.loads(out.read_text())
    assert seen["cwd"] == str(workdir)
    assert seen["env"]["PYTHONPATH"].split(os.pathsep)[:2] == [str(tmp_path / "lib1"), str(tmp_path / "lib2")]
    assert str(tmp_path / "lib1") in seen["path"]
    assert seen["env"]["BATON_FLOW_RUN_ID"] == run.flow_run.id
    assert seen["env"]["PATH"] == "/from/run/env"  # the run's env wins over the agent's own environment
    assert seen["env"]["HOME"] == os.environ["HOME"]  # which is the base


def test_flow_logs_are_streamed_prefixed_by_the_run_name(
    make_local: Callable[..., ScriptAgent], api: FakeApi, capfd: pytest.CaptureFixture[str]
) -> None:
    agent = make_local("print('hello from the flow'); import sys; print('oops', file=sys.stderr)", show_flow_logs=True)
    run = claimed(api)
    deployment = deploy(agent, run)
    assert wait_exit(agent, deployment) == 0
    deadline = time.monotonic() + 5
    output = ""
    while "oops" not in output and time.monotonic() < deadline:
        time.sleep(0.05)
        output += capfd.readouterr().out
    assert f"[{run.flow_run.name}] hello from the flow" in output
    assert f"[{run.flow_run.name}] oops" in output


def test_flow_logs_are_discarded_by_default(
    make_local: Callable[..., ScriptAgent], api: FakeApi, capfd: pytest.CaptureFixture[str]
) -> None:
    agent = make_local("print('hello from the flow')")
    assert wait_exit(agent, deploy(agent, claimed(api))) == 0
    time.sleep(0.1)
    assert "hello from the flow" not in capfd.readouterr().out


def test_hostname_is_a_label_unless_switched_off(settings: BatonSettings, api: FakeApi) -> None:
    assert LocalAgent(settings=settings, client=api, labels=["dev"]).labels == sorted(["dev", hostname_label()])
    assert LocalAgent(settings=settings, client=api, labels=["dev"], hostname_label=False).labels == ["dev"]


def test_local_agent_runs_a_claimed_run_end_to_end(
    make_local: Callable[..., ScriptAgent], api: FakeApi, run_in_thread: Callable[[Any], AgentThread]
) -> None:
    run_id = api.add_run(labels=[hostname_label()])
    agent = make_local("import time; time.sleep(0.3)")
    running = run_in_thread(agent)

    api.wait_for_state(run_id, "Submitted")
    _state, message, data = api.last_state(run_id)
    assert data is not None
    assert message == f"PID: {data['pid']}"
    # The script reports no final state: after it exits the server hears of it and fails the run.
    api.wait_for_state(run_id, "Failed")
    assert "exited with code 0" in (api.last_state(run_id)[1] or "")
    agent.stop()
    running.join()


def test_missing_working_dir_fails_the_run_with_a_message_naming_it(
    make_local: Callable[..., ScriptAgent],
    api: FakeApi,
    run_in_thread: Callable[[Any], AgentThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="baton.agent")
    run_id = api.add_run(labels=[hostname_label()], type="local", working_dir="/no/such/dir")
    agent = make_local()
    running = run_in_thread(agent)

    api.wait_for_state(run_id, "Failed")
    assert "/no/such/dir" in (api.last_state(run_id)[1] or "")
    agent.stop()
    running.join()
    # The agent's log says why in one line; the traceback is only for DEBUG (the user's mistake is not a crash)
    (said,) = [r for r in caplog.records if r.getMessage().startswith(f"could not deploy run {run_id}")]
    assert said.levelno == logging.WARNING and said.exc_info is None and "/no/such/dir" in said.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.exc_info]


def test_cold_stop_kills_the_process_group_and_fails_the_run(
    make_local: Callable[..., ScriptAgent], api: FakeApi, run_in_thread: Callable[[Any], AgentThread]
) -> None:
    run_id = api.add_run(labels=[hostname_label()])
    agent = make_local("import time; time.sleep(60)")
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")
    pid = api.last_state(run_id)[2]["pid"]  # type: ignore[index]

    agent.stop()
    agent.stop()

    running.join()
    assert api.state(run_id) == "Failed"
    assert process_gone(pid)


def test_a_run_config_cannot_override_the_baton_variables_of_the_flow_process(
    make_local: Callable[..., ScriptAgent], api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run config env spelling reserved names in another case (the engine reads them case-insensitively),
    # and an agent whose own environment holds such a variant too
    monkeypatch.setenv("baton__api__key", "bat_the_agents_own_key")
    agent = make_local()
    agent.identity.tenant_id = "tenant-1"
    run = claimed(api, env={"baton__api__url": "http://10.9.9.9:1", "BATON_FLOW_RUN_ID": "x", "KEEP": "1"})

    env = agent.driver.process_env(agent.run_env(run))

    # Then the flow process's environment has each reserved name once, with the agent's values
    baton = {name: value for name, value in env.items() if name.upper().startswith("BATON_")}
    assert baton == {
        "BATON__API__URL": "http://127.0.0.1:9",
        "BATON__API__KEY": run.run_token,
        "BATON_FLOW_RUN_ID": run.flow_run.id,
        "BATON_FLOW_ID": "flow-1",
        "BATON_TENANT_ID": "tenant-1",
        "BATON__AGENT__LABELS": json.dumps(agent.labels),
        "BATON__LOGGING__SEND_TO_API": "true",
    }  # and not the agent's own BATON_HOME or baton__api__key: its environment stays with it
    assert env["KEEP"] == "1"


def test_kill_never_signals_the_pid_of_a_process_already_reaped(
    make_local: Callable[..., ScriptAgent], api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a flow-run process that has ended and been reaped: its pid may belong to another process by now
    agent = make_local()
    deployment = deploy(agent, claimed(api))
    assert wait_exit(agent, deployment) == 0
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, signum: signalled.append((pid, signum)))

    asyncio.run(agent.driver.kill(deployment, grace_seconds=0.1))

    assert signalled == []


def test_a_stored_deployment_is_stopped_only_when_it_is_provably_the_runs(
    make_local: Callable[..., ScriptAgent],
) -> None:
    # Given a flow-run process started before the agent restarted (its own session, its run id in its environment)
    agent = make_local()
    env = {**os.environ, "BATON_FLOW_RUN_ID": "run-1"}
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    process = subprocess.Popen(sleeper, env=env, start_new_session=True)
    here = {"pid": process.pid, "host": hostname_label()}
    try:
        # Then what is not provably that run's is left alone: another run's id, another host, junk
        for run_id, data in [
            ("run-2", here),
            ("run-1", {**here, "host": "elsewhere"}),
            ("run-1", {"pid": str(process.pid), "host": hostname_label()}),
            ("run-1", {"pid": True, "host": hostname_label()}),
            ("run-1", {"pid": 1, "host": hostname_label()}),
            ("run-1", {}),
        ]:
            assert asyncio.run(agent.driver.kill_stored(run_id, data, 1.0)) is None
            assert process.poll() is None
        # And the run's own process is stopped, and says what was
        assert asyncio.run(agent.driver.kill_stored("run-1", here, 1.0)) == f"its process {process.pid}"
        assert process.wait(timeout=10) == -signal.SIGTERM
        # And once it is gone, nothing is stopped (its pid may belong to someone else by now)
        assert asyncio.run(agent.driver.kill_stored("run-1", here, 1.0)) is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class RecordedEvents:
    """A driver's events: records when a deployment's end was told (``asyncio.Event`` set from any thread)."""

    name = "agent"
    sends_run_logs = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.changed = asyncio.Event()

    def deployments_changed(self) -> None:
        self.loop.call_soon_threadsafe(self.changed.set)

    def platform_back(self) -> None:
        return None

    def run_logs(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        return None


def test_a_spawned_runs_end_is_told_to_the_agent_at_once(make_local: Callable[..., ScriptAgent], api: FakeApi) -> None:
    # Given a spawned run (no warm process) whose process sleeps a moment, with the driver opened on events
    agent = make_local("import time; time.sleep(0.3)", prefork=False)

    async def scenario() -> tuple[bool, int, int | None]:
        events = RecordedEvents(asyncio.get_running_loop())
        await agent.driver.open(events)
        try:
            deployment = await agent.driver.deploy(claimed(api), {})
            assert not events.changed.is_set()
            # When it ends, the driver says so without being asked (its pidfd turned readable)
            await asyncio.wait_for(events.changed.wait(), timeout=20)
            watched = len(agent.driver._exit_fds)  # its pidfd, closed once read
            return events.changed.is_set(), watched, await agent.driver.inspect(deployment)
        finally:
            await agent.driver.close()

    assert asyncio.run(scenario()) == (True, 0, 0)
