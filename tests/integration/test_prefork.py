"""A run forked from the local agent's warm process is what a spawned ``python -m baton.engine`` is.

One probe flow reports what a flow can see of its process (session, environment, directory, import path, user,
umask, signal dispositions, descriptors, limits, argv, ``__main__``) and whether its atexit handler ran; it runs
under an agent that forks (the default) and one that spawns (``--no-prefork``), and the reports must match.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from baton.schemas.states import FINAL_STATES
from integration.conftest import Cli, wait_for_state
from support import wait_for

PROBE_FLOW = """
import atexit, json, os, resource, signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from baton import flow, task, LocalRun

PER_RUN = {"BATON_FLOW_RUN_ID", "BATON__API__KEY", "BATON__AGENT__LABELS"}  # labels: the two agents differ


def _fds():
    found = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        # the engine's connections come and go; the probe's own file has whatever number was free
        if not target.startswith(("socket:", "/proc/")) and not target.endswith(".unclosed"):
            found.append(f"{fd}={target}")
    return found


def _handler(name):
    handler = signal.getsignal(getattr(signal, name))
    return getattr(handler, "__qualname__", str(handler))  # a bound method's repr carries its address


@task
def look() -> dict:
    umask = os.umask(0)
    os.umask(umask)
    return {
        "own_session": os.getsid(0) == os.getpid() == os.getpgid(0),
        "env": {k: v for k, v in os.environ.items() if k not in PER_RUN},
        "cwd": os.getcwd(),
        "path_head": sys.path[1:3],  # [0] is the run's unpacked bundle
        "argv0": sys.argv[0],
        "main": sys.modules["__main__"].__spec__.name if sys.modules["__main__"].__spec__ else None,
        "ids": [os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups())],
        "umask": umask,
        "signals": {
            name: _handler(name)
            for name in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGXFSZ", "SIGCHLD", "SIGHUP", "SIGUSR1")
        },
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "fds": _fds(),
        "stdin": os.readlink("/proc/self/fd/0"),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "key_is_run_token": os.environ.get("BATON__API__KEY", "").startswith("batr_"),
        "proc_run_id": f"BATON_FLOW_RUN_ID={os.environ['BATON_FLOW_RUN_ID']}".encode()
        in open("/proc/self/environ", "rb").read().split(b"\\0"),
        "tz": [time.tzname[0], time.localtime(0).tm_hour],
        "forked": b"baton.engine.forkserver" in open(f"/proc/{os.getppid()}/cmdline", "rb").read(),
    }


@flow(run_config=LocalRun(working_dir=WORKDIR, env={"FROM_RUN_CONFIG": "yes", "TZ": "America/New_York"}))
def probe(marker: str) -> None:
    atexit.register(lambda: open(marker, "w").write("atexit ran"))
    # left open: an interpreter's exit waits for the pool's threads and flushes the file
    ThreadPoolExecutor(2).submit(time.sleep, 0.1)
    unclosed = open(marker + ".unclosed", "w")
    unclosed.write("flushed at exit")
    threading.Thread(target=time.sleep, args=(0.2,)).start()
    print("PROBE " + json.dumps(look(), sort_keys=True))
    # held by the flow's module to the end (after look(): not among its descriptors): whatever the interpreter's
    # exit does with it, a forked run does the same
    global KEPT
    KEPT = open(marker + ".kept", "w")
    KEPT.write("flushed when the module went")
"""


def _probe(cli: Cli, flow_file: Any, start_agent: Any, tmp_path: Path, *agent_args: str) -> dict[str, Any]:
    label = "prefork" if not agent_args else "spawn"
    marker = tmp_path / f"atexit-{label}"
    agent = start_agent("-l", label, "-p", str(tmp_path / "imports"), *agent_args)
    run = cli.json("run", "probe", "-l", label, "--param", f"marker={marker}")
    final = wait_for_state(cli, run["id"], set(FINAL_STATES), timeout=60)
    assert final["state"] == "Success", (final["state_message"], agent.log())
    lines = [line.message for line in cli.server.client().get_logs(run["id"]).logs]
    report: dict[str, Any] = json.loads(next(line for line in lines if line.startswith("PROBE "))[6:])
    # The process ends after it reported the final state: its atexit handler writes the marker then
    wait_for(marker.exists, timeout=20, what=f"the atexit marker of the {label} run")
    report["atexit"] = marker.read_text()
    unclosed = Path(f"{marker}.unclosed")
    report["unclosed"] = unclosed.read_text() if unclosed.exists() else None
    kept = Path(f"{marker}.kept")  # flushed after atexit, as the interpreter's last steps release the modules
    deadline = time.monotonic() + 10
    while not (kept.exists() and kept.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    report["kept"] = kept.read_text() if kept.exists() else None
    report["submitted"] = sorted(final["states"][2]["data"])
    return report


def test_a_forked_run_sees_the_process_a_spawned_one_sees(
    cli: Cli, start_agent: Any, flow_file: Any, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (tmp_path / "imports").mkdir()
    cli("register", str(flow_file("probe", PROBE_FLOW.replace("WORKDIR", repr(str(workdir))))))
    forked = _probe(cli, flow_file, start_agent, tmp_path)
    spawned = _probe(cli, flow_file, start_agent, tmp_path, "--no-prefork")
    # The forked run came from the warm process, the spawned one did not
    assert (forked.pop("forked"), spawned.pop("forked")) == (True, False)
    # Then everything the flow can see of its process is the same, and as documented
    assert {key: (value, spawned[key]) for key, value in forked.items() if spawned[key] != value} == {}
    assert forked.keys() == spawned.keys()
    assert forked["own_session"] is True
    assert forked["cwd"] == str(workdir)
    assert forked["path_head"] == [str(workdir), str(tmp_path / "imports")]
    assert forked["main"] == "baton.engine.__main__"
    assert forked["stdin"] == "/dev/null"
    assert forked["fds"] == ["0=/dev/null", "1=/dev/null", "2=/dev/null"]
    assert forked["env"]["FROM_RUN_CONFIG"] == "yes"
    assert forked["key_is_run_token"] is True
    assert forked["proc_run_id"] is True  # how a restarted agent recognises the run's process
    assert forked["tz"] == ["EST", 19]  # the run's TZ
    assert forked["submitted"] == ["host", "pid"]
    assert forked["unclosed"] == "flushed at exit"
    assert forked["kept"] == "flushed when the module went"
    assert forked["signals"]["SIGPIPE"] == "1"  # ignored, as Python starts
    assert forked["signals"]["SIGTERM"] == "CancelSignal._handle"  # the engine's
    assert forked["atexit"] == "atexit ran"
