"""Issue 8, item 2: flow code must not reach the local agent's key.

Found: a flow read the agent's key from ``/proc/<agent>/cmdline`` (``-k``) and ``/proc/<agent>/environ``, an admin
key from ``$BATON_HOME/config.toml``, and inherited the agent's whole environment. Now: flows get a clean
environment (an allow-list plus the run's), the agent reads its key from a 0600 file, drops it from its environment
and is non-dumpable, and ``--run-as USER`` runs flows as a user who can read none of it. The probe flow below tries
every route and reports what it found; the tests assert the agent's keys are nowhere in it.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from baton.agent.env import INHERITED_NAMES, INHERITED_PREFIXES, RESERVED_NAMES
from baton.client import Client
from baton.exceptions import AuthenticationError
from security.local_support import (
    agent_environment,
    flow_user,
    open_dir,
    python_for,
    read_report,
    register_flow_file,
    start_agent,
    stop_agent,
    wait_for_end,
)
from support import ServerProcess

__all__ = ["flow_user"]  # a fixture, imported for the tests below

KEY_PATTERN = re.compile(r"batr?_[A-Za-z0-9_\-]{20,}")

PROBE_SOURCE = '''
import json
import os
import re

from baton import flow

KEY = re.compile(rb"batr?_[A-Za-z0-9_-]{20,}")


def attempt(read):
    try:
        data = read()
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "text": data.decode("utf-8", "replace")}


def read_file(path):
    with open(path, "rb") as handle:
        return handle.read(1 << 20)


def read_memory(pid):
    """Every key-like string in the agent's readable memory."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(part, 16) for part in span.split("-"))
            if "r" not in perms or end - start > 64 << 20:
                continue
            try:
                mem.seek(start)
                found.update(KEY.findall(mem.read(end - start)))
            except (OSError, OverflowError, ValueError):
                continue
    return b"\\n".join(sorted(found))


def list_fds(pid):
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return "\\n".join(names).encode()


def the_agent():
    """The agent: the parent, or the parent of the warm process this run was forked from (agent/prefork.py)."""
    parent = os.getppid()
    if b"baton.engine.forkserver" in open(f"/proc/{parent}/cmdline", "rb").read():
        return int(open(f"/proc/{parent}/stat").read().rsplit(")", 1)[1].split()[1]), parent
    return parent, None


@flow
def probe(report: str, paths: list[str], hunt: bool = True) -> None:
    agent, warm = the_agent()
    found = {
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "cwd_owner": os.stat(".").st_uid,
        "env": dict(os.environ),
        "routes": {},
    }
    if hunt:
        routes = found["routes"]
        routes["cmdline"] = attempt(lambda: read_file(f"/proc/{agent}/cmdline"))
        routes["environ"] = attempt(lambda: read_file(f"/proc/{agent}/environ"))
        if warm is not None:  # the warm process a forked run comes from: it must hold no key either
            routes["warm_environ"] = attempt(lambda: read_file(f"/proc/{warm}/environ"))
            routes["warm_cmdline"] = attempt(lambda: read_file(f"/proc/{warm}/cmdline"))
        routes["memory"] = attempt(lambda: read_memory(agent))
        routes["fds"] = attempt(lambda: list_fds(agent))
        argv = routes["cmdline"].get("text", "").split("\\0")
        if "--key-file" in argv:
            paths = [*paths, argv[argv.index("--key-file") + 1]]
        for path in paths:
            routes[path] = attempt(lambda path=path: read_file(path))
    with open(report, "w") as handle:
        json.dump(found, handle)
'''


def _keys_in(report: dict[str, Any]) -> set[str]:
    return set(KEY_PATTERN.findall(json.dumps(report)))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def test_a_flow_run_as_another_user_reaches_the_agents_key_by_no_route(
    server: ServerProcess, flow_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    workspace = open_dir()
    try:
        _check_no_route(server, flow_user, workspace, tmp_path)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _check_no_route(server: ServerProcess, user: pwd.struct_passwd, workspace: Path, tmp_path: Path) -> None:
    # Given an agent whose key is in a 0600 key file AND in its environment, and whose $BATON_HOME/config.toml
    # (0600, in a directory anyone may enter) holds an admin key
    python = python_for(user, workspace)
    admin = server.client()
    runner_key = admin.create_api_key("runner", "sec-agent").key
    admin_key = server.admin_key
    home = workspace / "home"
    home.mkdir(mode=0o755)
    _write_private(home / "config.toml", f'[api]\nkey = "{admin_key}"\n')
    key_file = workspace / "agent.key"
    _write_private(key_file, runner_key + "\n")
    report_dir = workspace / "report"
    report_dir.mkdir(mode=0o700)
    os.chown(report_dir, user.pw_uid, user.pw_gid)
    report_file = report_dir / "report.json"

    # When it runs, with --run-as, a flow that hunts for keys
    env = agent_environment(home, server.url, BATON__API__KEY=runner_key, SECRET_CANARY="canary")
    args = ["--name", "sec-agent", "--key-file", str(key_file), "--run-as", user.pw_name]
    agent = start_agent(python, args, env, tmp_path / "agent.log")
    try:
        name = register_flow_file(admin, tmp_path / "probe.py", PROBE_SOURCE)
        paths = [str(home / "config.toml"), str(key_file), str(home)]
        run = admin.create_flow_run(flow_name=name, parameters={"report": str(report_file), "paths": paths})
        ended = wait_for_end(server, run.id, agent)
        assert ended.state == "Success", (ended.state_message, agent.log())
    finally:
        stop_agent(agent)
    report = read_report(report_file)

    # Then the flow ran as that user, in a directory of its own, with none of the agent's environment
    assert report["uid"] == user.pw_uid
    assert report["cwd_owner"] == user.pw_uid
    assert "SECRET_CANARY" not in report["env"] and "BATON_HOME" not in report["env"]
    # and every route to the agent's keys was closed: only the command line (world-readable) could be read
    routes = report["routes"]
    assert routes["cmdline"]["ok"] and str(key_file) in routes["cmdline"]["text"]
    for route in ("environ", "memory", "fds", str(home / "config.toml"), str(key_file)):
        assert not routes[route]["ok"], (route, routes[route])
    text = json.dumps(report)
    assert runner_key not in text
    assert admin_key not in text
    # and the only key it holds is its own run token, which is not a key of any role
    for key in _keys_in(report):
        try:
            with Client(server.url, key) as client:
                who = client.whoami()
        except AuthenticationError:
            continue
        assert who.role is None and who.flow_run_id == run.id, who


def test_a_flow_gets_only_the_allow_listed_part_of_the_agents_environment(
    server: ServerProcess, tmp_path: Path
) -> None:
    # Given an agent whose environment holds its key, its home, settings, --env values as JSON and other secrets
    admin = server.client()
    runner_key = admin.create_api_key("runner", "env-agent").key
    home = tmp_path / "agent-home"
    home.mkdir()
    env = agent_environment(
        home,
        server.url,
        BATON__API__KEY=runner_key,
        BATON__AGENT__ENV=json.dumps({"FROM_AGENT_ENV": "given"}),
        BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="1",
        SECRET_CANARY="canary",
        AWS_SECRET_ACCESS_KEY="agent-only",
        LC_ALL="C.UTF-8",
        TZ="UTC",
    )
    agent = start_agent(sys.executable, ["--name", "env-agent"], env, tmp_path / "agent.log")
    report_file = tmp_path / "report.json"
    try:
        name = register_flow_file(admin, tmp_path / "probe.py", PROBE_SOURCE)
        parameters = {"report": str(report_file), "paths": [], "hunt": False}
        run = admin.create_flow_run(flow_name=name, parameters=parameters)
        ended = wait_for_end(server, run.id, agent)
        assert ended.state == "Success", (ended.state_message, agent.log())
    finally:
        stop_agent(agent)
    flow_env: dict[str, str] = read_report(report_file)["env"]

    # Then the flow's environment is the allow-list, the run's BATON_ variables and the agent's --env, no more
    allowed = INHERITED_NAMES | RESERVED_NAMES | {"HOME", "USER", "LOGNAME", "FROM_AGENT_ENV"}
    unexpected = {name for name in flow_env if name not in allowed and not name.startswith(INHERITED_PREFIXES)}
    assert unexpected == set()
    assert flow_env["FROM_AGENT_ENV"] == "given"
    assert flow_env["LC_ALL"] == "C.UTF-8" and flow_env["TZ"] == "UTC"
    assert flow_env["BATON__API__KEY"].startswith("batr_")
    assert runner_key not in json.dumps(flow_env)


def test_without_run_as_a_flow_of_another_process_of_the_same_user_cannot_read_the_agents_proc_files(
    server: ServerProcess, flow_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    # Given an agent run by an ordinary user (no --run-as: its flows run as that user too), its key in its
    # environment: the agent is non-dumpable, so its /proc files belong to root
    workspace = open_dir()
    try:
        python = python_for(flow_user, workspace)
        admin = server.client()
        runner_key = admin.create_api_key("runner", "same-user-agent").key
        os.chown(workspace, flow_user.pw_uid, flow_user.pw_gid)
        report_file = workspace / "report.json"
        env = agent_environment(workspace, server.url, BATON__API__KEY=runner_key, HOME=str(workspace))
        log = tmp_path / "agent.log"
        agent = start_agent(python, ["--name", "same-user-agent"], env, log, user=flow_user)
        try:
            name = register_flow_file(admin, tmp_path / "probe.py", PROBE_SOURCE)
            run = admin.create_flow_run(flow_name=name, parameters={"report": str(report_file), "paths": []})
            ended = wait_for_end(server, run.id, agent)
            assert ended.state == "Success", (ended.state_message, agent.log())
        finally:
            stop_agent(agent)
        report = read_report(report_file)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    # Then the flow, of the same uid, could read neither its environment, its memory nor its descriptors
    assert report["uid"] == flow_user.pw_uid
    routes = report["routes"]
    for route in ("environ", "memory", "fds"):
        assert not routes[route]["ok"], (route, routes[route])
    assert runner_key not in json.dumps(report)


def test_the_probe_finds_the_key_where_it_is_readable(server: ServerProcess, tmp_path: Path) -> None:
    """The control: run as root without --run-as, a flow can do what root can, and the probe then finds the
    agent's key (the trust boundary of an agent without --run-as). So the tests above are not blind."""
    if os.geteuid() != 0:
        pytest.skip("the control needs an agent and flows run as root")
    admin = server.client()
    runner_key = admin.create_api_key("runner", "root-agent").key
    env = agent_environment(tmp_path, server.url, BATON__API__KEY=runner_key)
    report_file = tmp_path / "report.json"
    agent = start_agent(sys.executable, ["--name", "root-agent"], env, tmp_path / "agent.log")
    try:
        name = register_flow_file(admin, tmp_path / "probe.py", PROBE_SOURCE)
        run = admin.create_flow_run(flow_name=name, parameters={"report": str(report_file), "paths": []})
        ended = wait_for_end(server, run.id, agent)
        assert ended.state == "Success", (ended.state_message, agent.log())
    finally:
        stop_agent(agent)
    routes = read_report(report_file)["routes"]
    assert runner_key in routes["environ"]["text"]  # the environment the agent started with, though it dropped it
    assert runner_key in routes["memory"]["text"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_agent_refuses_a_key_file_others_can_read(server: ServerProcess, tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "agent.key"
    key_file.write_text("bat_not_checked_anyway_0123456789\n")
    key_file.chmod(mode)
    env = agent_environment(tmp_path, server.url)
    agent = start_agent(sys.executable, ["--key-file", str(key_file), "--max-polls", "0"], env, tmp_path / "agent.log")
    assert agent.process.wait(30) == 2
    assert f"chmod 600 {key_file}" in agent.log()
    assert "Traceback" not in agent.log()
