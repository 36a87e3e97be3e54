"""The warm engine process (``agent/prefork.py``, ``engine/forkserver.py``) with real forks.

tests/integration/test_prefork.py compares what a forked and a spawned run see; these check the protocol: exit
codes as ``subprocess`` reports them, a zombie kept until its exit is read, output to the given descriptor, and a
spawn when the warm process cannot start or the run's environment needs a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.agent.env import inherited_environment
from baton.agent.prefork import ForkServer, needs_spawn
from support import free_port, wait_for


@pytest.fixture
def server() -> Iterator[ForkServer]:
    forks = ForkServer(inherited_environment(os.environ, home=str(Path.home()), user="root"))
    yield forks
    forks.close()


def test_a_forked_engine_exits_as_a_spawned_one_and_writes_to_the_given_descriptor(server: ForkServer) -> None:
    # Given a run forked with no flow run in its environment
    read_end, write_end = os.pipe()
    child = server.fork({"env": {"PATH": os.environ["PATH"]}, "cwd": None}, write_end, write_end, None)
    os.close(write_end)
    # Then it exits 2 (misconfigured), saying why on its stderr, as `python -m baton.engine` does
    assert child.wait(30) == 2
    with os.fdopen(read_end) as output:
        assert "no flow run: set BATON_FLOW_RUN_ID" in output.read()
    # and its /proc environment names no run but the placeholder's replacement (it had no run id to write)
    assert "RUN_ID" not in str(child.pid)


def test_a_killed_run_reports_the_signal_and_its_pid_stays_reserved_until_read(server: ForkServer) -> None:
    # Given a forked engine that retries an API on a closed port (it keeps running)
    env = {
        "PATH": os.environ["PATH"],
        "BATON_FLOW_RUN_ID": "5b0b3b1e-6a7c-4a43-9a25-1d3c8e7f0a11",
        "BATON__API__URL": f"http://127.0.0.1:{free_port()}",
        "BATON__API__KEY": "batr_test",
    }
    read_end, write_end = os.pipe()
    child = server.fork({"env": env, "cwd": None}, write_end, write_end, None)
    os.close(write_end)
    os.close(read_end)
    assert os.getpgid(child.pid) == child.pid  # it leads its own process group
    # When its group is killed
    os.killpg(child.pid, signal.SIGKILL)
    wait_for(child.has_exited, timeout=30, what="the exit to be reported")
    # Then its zombie is kept (the pid is still its, so group signals cannot reach another process) until polled
    assert Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    assert child.returncode is None
    assert child.poll() == -signal.SIGKILL
    wait_for(lambda: not Path(f"/proc/{child.pid}").exists(), timeout=10, what="the zombie to be reaped")


def test_no_warm_process_means_fork_refuses_and_the_caller_spawns(monkeypatch: pytest.MonkeyPatch) -> None:
    forks = ForkServer({"PATH": os.environ["PATH"]})
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once: never ready
    with pytest.raises(OSError, match="no warm engine process"):
        forks.fork({"env": {}, "cwd": None}, 1, 2, None)
    # and it does not try again for every run
    started = time.monotonic()
    with pytest.raises(OSError):
        forks.fork({"env": {}, "cwd": None}, 1, 2, None)
    assert forks._gone and time.monotonic() - started < 30
    forks.close()


@pytest.mark.parametrize(
    ("run_env", "reason"),
    [
        ({"PYTHONPATH": "/srv/flows"}, None),
        ({"PYTHONHASHSEED": "0"}, "sets PYTHONHASHSEED"),
        ({"PYTHONDONTWRITEBYTECODE": "1"}, "sets PYTHONDONTWRITEBYTECODE"),
        ({"LC_ALL": "C"}, "sets LC_ALL"),
        ({"LANG": "C.UTF-8"}, None),
        ({"OTHER": "x"}, None),
    ],
)
def test_a_run_whose_environment_changes_interpreter_start_up_is_spawned(
    run_env: dict[str, str], reason: str | None
) -> None:
    base = {"LANG": "C.UTF-8", "PATH": "/usr/bin"}
    found = needs_spawn({**base, **run_env}, base)
    assert (found is None) == (reason is None)
    if reason is not None:
        assert reason in (found or "")


def test_a_run_shows_its_id_in_proc_environ_and_close_is_prompt(server: ForkServer) -> None:
    # Given a forked engine with a run id that keeps retrying an API on a closed port
    run_id = "0f0e0d0c-0b0a-4909-8807-060504030201"
    env = {
        "PATH": os.environ["PATH"],
        "BATON_FLOW_RUN_ID": run_id,
        "BATON__API__URL": f"http://127.0.0.1:{free_port()}",
        "BATON__API__KEY": "batr_test",
    }
    null = os.open(os.devnull, os.O_WRONLY)
    child = server.fork({"env": env, "cwd": None}, null, null, None)
    os.close(null)
    # Then /proc/PID/environ carries its run id (what kill_stored checks after an agent restart), not the placeholder
    shown = wait_for(
        lambda: f"BATON_FLOW_RUN_ID={run_id}".encode() in Path(f"/proc/{child.pid}/environ").read_bytes(),
        timeout=10,
        what="the run id in /proc",
    )
    assert shown
    # When the agent stops its warm process, it goes at once, and the run goes on in its own session
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 3
    assert child.has_exited() is False and os.getpgid(child.pid) == child.pid
    os.killpg(child.pid, signal.SIGKILL)
    # and the run's end is still seen, through the pidfd taken at the fork (the exit code is lost with the server)
    wait_for(child.has_exited, timeout=30, what="the orphan's end")
    assert child.poll() == 1


def test_a_run_that_ends_the_interpreter_exits_as_a_spawned_one(server: ForkServer, tmp_path: Path) -> None:
    # A flow-run process killed by Ctrl-C, or exiting with a message, ends with the interpreter's codes
    (tmp_path / "sitecustomize.py").write_text("")
    null = os.open(os.devnull, os.O_WRONLY)
    env = {"PATH": os.environ["PATH"], "BATON_FLOW_RUN_ID": "", "PYTHONPATH": str(tmp_path)}
    child = server.fork({"env": env, "cwd": str(tmp_path)}, null, null, None)
    os.close(null)
    assert child.wait(30) == 2  # the engine's "no flow run" usage exit, from main() returning through the interpreter


def _descriptors(pid: int) -> dict[int, str]:
    """What each open descriptor of ``pid`` is (``socket:[inode]``, ``anon_inode:[pidfd]``, a path...)."""
    found = {}
    for entry in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # one closed while listed
            found[int(entry)] = os.readlink(f"/proc/{pid}/fd/{entry}")
    return found


def test_a_run_keeps_none_of_the_warm_processs_descriptors(server: ForkServer) -> None:
    # Given a warm process that has forked runs before (it holds their pidfds) and a run that keeps retrying an API
    # on a closed port
    for _ in range(2):
        null = os.open(os.devnull, os.O_WRONLY)
        earlier = server.fork({"env": {"PATH": os.environ["PATH"]}, "cwd": None}, null, null, None)
        os.close(null)
        assert earlier.wait(30) == 2
    env = {
        "PATH": os.environ["PATH"],
        "BATON_FLOW_RUN_ID": "1a2b3c4d-0000-4000-8000-000000000001",
        "BATON__API__URL": f"http://127.0.0.1:{free_port()}",
        "BATON__API__KEY": "batr_test",
    }
    null = os.open(os.devnull, os.O_WRONLY)
    child = server.fork({"env": env, "cwd": None}, null, null, None)
    os.close(null)
    try:
        # (once it has become the run: its id is in its environment then)
        wait_for(
            lambda: env["BATON_FLOW_RUN_ID"].encode() in Path(f"/proc/{child.pid}/environ").read_bytes(),
            timeout=10,
            what="the run to start",
        )
        warm = server._process
        assert warm is not None
        private = {target for target in _descriptors(warm.pid).values() if target.startswith(("socket:", "anon_inode"))}
        assert any(target.startswith("socket:") for target in private)  # the agent's socket, at least
        # Then the run holds none of them: not the socket that orders forks, not a pidfd of another run
        held = _descriptors(child.pid)
        assert not private & set(held.values()), held
        assert not any("pidfd" in target for target in held.values()), held
        # and its standard streams are the ones it was given
        assert held[1] == held[2] == os.devnull
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)


def test_the_warm_process_tells_of_each_childs_end_as_it_comes(server: ForkServer) -> None:
    ends: list[int] = []
    server.on_exit = lambda: ends.append(1)
    null = os.open(os.devnull, os.O_WRONLY)
    child = server.fork({"env": {"PATH": os.environ["PATH"]}, "cwd": None}, null, null, None)
    os.close(null)

    assert child.wait(30) == 2
    assert ends == [1]


def test_a_runs_exit_keeps_its_code_and_runs_every_step_whatever_one_raises(tmp_path: Path) -> None:
    import atexit

    from baton.engine import forkserver

    marker = tmp_path / "marker"
    pid = os.fork()
    if pid == 0:  # the run's process: its exit only
        try:
            forkserver._PRELOADED.update(sys.modules)  # what a warm process would have imported
            atexit.register(lambda: marker.write_text("the next handler ran"))
            atexit.register(lambda: 1 / 0)  # runs first (handlers run last in, first out) and raises
            sys.stdout = None  # type: ignore[assignment]  # a flow may drop its standard streams
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)  # the handler's traceback goes nowhere
            forkserver._end_run(3)
        finally:
            os._exit(99)  # _end_run did not end the process
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 3
    assert marker.read_text() == "the next handler ran"
