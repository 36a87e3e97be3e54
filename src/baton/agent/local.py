"""The local agent: each flow run is a ``python -m baton.engine`` process on this host.

Each process gets its own session (so its own process group): a cancel or a cold stop kills the whole group, the
run's child processes included, and a Ctrl-C in the agent's terminal does not reach it.

A flow gets a clean environment (``env.py``: an allow-list of the agent's, plus the run's), never the agent's key.
Without ``--run-as`` it runs as the agent's user and can do what that user can (read the agent's files). With
``--run-as USER`` it runs as USER (``run_as.py``) in a fresh working directory of its own; a ``LocalRun(user=...)``
is honoured only for a user the agent allows (``--allow-run-as``).

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev"], import_paths=["/srv/flows"], show_flow_logs=True).start()
    LocalAgent(run_as="baton-flows", key_file="/etc/baton/agent.key").start()   # as root
    Agent(LocalDriver(LocalOptions(import_paths=["/srv/flows"])), labels=["dev"]).start()   # the same, composed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Unpack

from pydantic import BaseModel, ConfigDict, Field

from baton.agent.base import Agent, AgentOptions, agent_settings, runtime_options
from baton.agent.capacity import host_run_limit
from baton.agent.driver import Deployment, DriverEvents, Recovered
from baton.agent.env import inherited_environment
from baton.agent.option_specs import LOCAL_OPTIONS
from baton.agent.prefork import ForkedProcess, ForkServer, ignored_signals, needs_spawn
from baton.agent.run_as import (
    OsUser,
    check_can_switch,
    current_user,
    lookup_user,
    make_workdir,
    probe_user,
    remove_workdir,
)
from baton.exceptions import ConfigurationError, DeploymentError
from baton.labels import hostname_label
from baton.schemas.core import RunConfig, RunConfigType, StorageType
from baton.schemas.responses import ClaimedRun
from baton.settings import AgentSettings, config_path

logger = logging.getLogger("baton.agent")

# A run's process: spawned, or forked from the warm engine process (``prefork.py``).
RunProcess = subprocess.Popen[str] | ForkedProcess

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


def _has_exited(process: RunProcess) -> bool:
    """Whether the process has exited, without reaping it (its pid stays reserved for us as a zombie)."""
    if process.returncode is not None:
        return True
    if isinstance(process, ForkedProcess):
        return process.has_exited()
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped meanwhile by something other than this Popen
        process.poll()  # on ECHILD it sets a returncode: the pid is not ours any more
        return True


def _signal_group(pid: int, signum: int) -> None:
    # The process leads its own session, so its group id is its pid; a missing group has ended already.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _runs_flow_run(pid: int, run_id: str) -> bool:
    """Whether process ``pid`` is the flow-run process of ``run_id``: its environment says so (a pid alone may
    have been given to another process since). A forked run shows its warm process's start-up environment, with
    its own run id written in (``engine/forkserver.py``)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except PermissionError:
        # A flow run as another user (--run-as) by an agent that is not root: it cannot be proven the run's
        logger.warning("cannot read the environment of process %s: not stopping it as run %s's", pid, run_id)
        return False
    except OSError:  # gone: nothing to stop
        return False
    return f"BATON_FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0")


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    """Whether the process of ``pidfd`` ends within ``timeout`` seconds (a pidfd is readable once it has)."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class LocalOptions(BaseModel):
    """The local driver's options (``baton agent local start``); in settings, fields of ``[agent]``.

    Args:
        import_paths: prepended to the runs' ``PYTHONPATH`` (``-p/--import-path``).
        show_flow_logs: stream the runs' output to the agent's stdout, prefixed by the run name
            (default: discard it).
        hostname_label: add this host's name to the agent's labels (default True).
        run_as: run flows as this OS user (``--run-as``; the agent must be root, or have CAP_SETUID/CAP_SETGID).
        allow_run_as: users a ``LocalRun(user=...)`` may ask for (``--allow-run-as``, repeatable); other users
            fail the run.
        secret_files: files flows must not be able to read (the agent's key file, its config file); a run-as
            user who can read one is refused at start.
        prefork: fork each run from a warm process that has imported the engine (``prefork.py``; default True),
            instead of spawning ``python -m baton.engine``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    import_paths: list[str] = Field(default_factory=list)
    show_flow_logs: bool = False
    hostname_label: bool = True
    run_as: str | None = None
    allow_run_as: list[str] = Field(default_factory=list)
    secret_files: list[str] = Field(default_factory=list)
    prefork: bool = True

    @classmethod
    def from_settings(cls, settings: AgentSettings, key_file: str | None = None) -> LocalOptions:
        secrets = [str(config_path())]
        if key_file:
            secrets.append(str(Path(key_file).expanduser()))
        return cls(
            import_paths=settings.import_paths,
            show_flow_logs=settings.show_flow_logs,
            hostname_label=settings.hostname_label,
            run_as=settings.run_as,
            allow_run_as=settings.allow_run_as,
            secret_files=secrets,
            prefork=settings.prefork,
        )


class LocalAgent(Agent):
    """An :class:`~baton.agent.base.Agent` with a :class:`LocalDriver`: flow runs are local subprocesses.

    Takes the common agent options and those of :class:`LocalOptions` (``import_paths``, ``show_flow_logs``,
    ``hostname_label``, ``run_as``, ``allow_run_as``); each left as None falls back to the settings.

    Raises:
        ConfigurationError: also when a run-as user does not exist, or this process cannot switch to it.
    """

    driver: LocalDriver

    def __init__(
        self,
        *,
        import_paths: list[str] | None = None,
        show_flow_logs: bool | None = None,
        hostname_label: bool | None = None,
        run_as: str | None = None,
        allow_run_as: list[str] | None = None,
        prefork: bool | None = None,
        **options: Unpack[AgentOptions],
    ) -> None:
        overrides = {
            "import_paths": import_paths,
            "show_flow_logs": show_flow_logs,
            "hostname_label": hostname_label,
            "run_as": run_as,
            "allow_run_as": allow_run_as,
            "prefork": prefork,
        }
        settings = agent_settings(LOCAL_OPTIONS, overrides, **options)
        driver = LocalDriver(LocalOptions.from_settings(settings.agent, settings.api.key_file))
        super().__init__(driver, settings=settings, **runtime_options(options))


class LocalDriver:
    """Deploys flow runs as local subprocesses (see the module docstring).

    Raises:
        ConfigurationError: a run-as user does not exist, or this process cannot switch to it.
    """

    agent_type = "local"
    watch_interval_seconds = 0.5

    def __init__(self, options: LocalOptions | None = None) -> None:
        self.options = options or LocalOptions()
        self.run_as = lookup_user(self.options.run_as) if self.options.run_as else None
        self.allowed_users = {name: lookup_user(name, "--allow-run-as") for name in self.options.allow_run_as}
        check_can_switch([user for user in (self.run_as, *self.allowed_users.values()) if user is not None])
        self._workdirs: dict[int, str] = {}  # pid -> the directory made for a run under another user
        self.default_limit: int | None = host_run_limit()  # runs share this host
        self._forkserver = ForkServer(self.process_env({})) if self.options.prefork else None
        self._events: DriverEvents | None = None
        self._exit_fds: set[int] = set()  # pidfds of spawned runs, read by the event loop: an end is seen at once

    def labels(self) -> list[str]:
        return [hostname_label()] if self.options.hostname_label else []

    def check_api_url(self, api_url: str) -> str | None:
        return None  # the flow runs where the agent runs: what the agent reaches, it reaches

    def problem(self) -> str | None:
        return None  # this host is always there while the agent is

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for pidfd in self._exit_fds:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        self._exit_fds.clear()
        if self._forkserver is not None:
            await asyncio.to_thread(self._forkserver.close)

    async def open(self, events: DriverEvents) -> None:
        """Before registering: every user flows may run as can run Baton, and cannot read the agent's secrets."""
        self._events = events
        if self._forkserver is not None:
            self._forkserver.on_exit = events.deployments_changed
        users = {user.name: user for user in (self.run_as, *self.allowed_users.values()) if user is not None}
        secrets = [Path(path) for path in self.options.secret_files]
        for user in users.values():
            if user.uid == os.geteuid():
                continue
            problem = await asyncio.to_thread(probe_user, user, sys.executable, secrets)
            if problem is not None:
                raise ConfigurationError(f"flows cannot run as {user.name}: {problem}")
        if self._forkserver is not None and type(self).command is LocalDriver.command:
            await asyncio.to_thread(self._forkserver.start)  # now, not on the first run's path

    def user_for(self, run_config: RunConfig) -> OsUser | None:
        """The user a run's process runs as (None: the agent's own).

        Raises:
            DeploymentError: the run config asks for a user this agent does not allow.
        """
        wanted = run_config.user
        if wanted is None or (self.run_as is not None and wanted == self.run_as.name):
            return self.run_as
        if wanted in self.allowed_users:
            return self.allowed_users[wanted]
        if self.run_as is None and wanted == current_user().name:
            return None
        raise DeploymentError(
            f"this run asks to run as user {wanted!r}, which this agent does not allow: "
            f"start the agent with --allow-run-as {wanted}"
        )

    def command(self, claimed: ClaimedRun) -> list[str]:
        """The flow-run process's command line: the engine, run by this agent's Python."""
        return [sys.executable, "-m", "baton.engine"]

    def process_env(
        self, run_env: dict[str, str], user: OsUser | None = None, home: str | None = None
    ) -> dict[str, str]:
        """The allow-listed part of this process's environment (``env.py``) under the run's, with the import paths
        in front of ``PYTHONPATH``; HOME, USER and LOGNAME are those of ``user`` (None: the agent's own)."""
        who = user or current_user()
        env = {**inherited_environment(os.environ, home=home or who.home, user=who.name), **run_env}
        paths = [os.path.abspath(path) for path in self.options.import_paths]
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
        if claimed.flow.storage.type == StorageType.DOCKER:
            raise DeploymentError(
                "the flow's code is in a Docker image (storage docker): a docker or kubernetes agent runs it"
            )
        cwd = run_config.working_dir
        if cwd and not os.path.isdir(cwd):
            raise DeploymentError(f"working directory {cwd!r} does not exist on {hostname_label()}")
        user = self.user_for(run_config)
        process = await asyncio.to_thread(self._start_process, claimed, env, cwd, user)
        if not isinstance(process, ForkedProcess):  # the warm process reports its children's ends itself
            self._watch_exit(process.pid)
        return Deployment(
            message=f"PID: {process.pid}", data={"pid": process.pid, "host": hostname_label()}, handle=process
        )

    def _watch_exit(self, pid: int) -> None:
        """Tell the agent when spawned process ``pid`` ends (its pidfd turns readable), so that its run's slot frees
        then and not at the next inspection, up to ``watch_interval_seconds`` later."""
        events = self._events
        if events is None:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # no pidfd (an old kernel): the inspections see the end
            return
        loop = asyncio.get_running_loop()

        def ended() -> None:
            loop.remove_reader(pidfd)
            self._exit_fds.discard(pidfd)
            os.close(pidfd)
            events.deployments_changed()

        self._exit_fds.add(pidfd)
        loop.add_reader(pidfd, ended)

    def _start_process(
        self, claimed: ClaimedRun, run_env: dict[str, str], cwd: str | None, user: OsUser | None
    ) -> RunProcess:
        if user is None:
            return self._popen(claimed, self.process_env(run_env), cwd, {})
        # A directory of its own: the flow must not work in (and write to) the agent's.
        workdir = make_workdir(user)
        home = user.home if os.path.isdir(user.home) else workdir
        switch = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        try:
            process = self._popen(claimed, self.process_env(run_env, user, home), cwd or workdir, switch)
        except DeploymentError:
            remove_workdir(workdir)
            raise
        self._workdirs[process.pid] = workdir
        return process

    def _popen(self, claimed: ClaimedRun, env: dict[str, str], cwd: str | None, switch: dict[str, Any]) -> RunProcess:
        forked = self._fork(claimed, env, cwd, switch)
        if forked is not None:
            return forked
        show = self.options.show_flow_logs
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
                **switch,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise DeploymentError(f"cannot start the flow-run process: {exc}") from exc
        self._stream(claimed, process)
        return process

    def _stream(self, claimed: ClaimedRun, process: RunProcess) -> None:
        if self.options.show_flow_logs and process.stdout is not None:
            prefix = f"[{claimed.flow_run.name}] "
            threading.Thread(
                target=_stream_output, args=(process.stdout, prefix), name=f"baton-output-{process.pid}", daemon=True
            ).start()

    def _fork(
        self, claimed: ClaimedRun, env: dict[str, str], cwd: str | None, switch: dict[str, Any]
    ) -> ForkedProcess | None:
        """The run forked from the warm process, or None when it must be spawned (see ``prefork.py``)."""
        server = self._forkserver
        if server is None or type(self).command is not LocalDriver.command:
            return None  # off, or a driver that runs another command than the engine (tests' scripts)
        reason = needs_spawn(env, server.env)
        if reason is not None:
            logger.info("spawning flow run %s: %s", claimed.flow_run.id, reason)
            return None
        spec = {
            "env": env,
            "cwd": cwd,
            "uid": switch.get("user"),
            "gid": switch.get("group"),
            "groups": switch.get("extra_groups"),
            "ignored_signals": ignored_signals(),
        }
        if self.options.show_flow_logs:
            read_end, write_end = os.pipe()
            out_fd, reader = write_end, open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115
        else:
            out_fd, reader = os.open(os.devnull, os.O_WRONLY), None
        try:
            process = server.fork(spec, out_fd, out_fd, reader)
        except OSError as exc:
            logger.warning("spawning flow run %s: %s", claimed.flow_run.id, exc)
            if reader is not None:
                reader.close()
            return None
        finally:
            os.close(out_fd)
        self._stream(claimed, process)
        return process

    async def inspect(self, deployment: Deployment) -> int | None:
        process: RunProcess = deployment.handle
        returncode = process.poll()
        if returncode is None:
            return None
        self._forget_workdir(process.pid)
        return exit_code_of(returncode)

    def _forget_workdir(self, pid: int) -> None:
        workdir = self._workdirs.pop(pid, None)
        if workdir is not None:
            remove_workdir(workdir)

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        process: RunProcess = deployment.handle
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
        self._forget_workdir(process.pid)

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        """A flow-run process this agent started before it restarted: on this host, still running, and with
        this run's id in its environment. A pidfd taken before that check tells whether the process checked is
        still the one alive when it is signalled (a pid freed meanwhile fails the check or the pidfd)."""
        pid = data.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or data.get("host") != hostname_label():
            return None
        return await asyncio.to_thread(self._kill_pid, pid, run_id, grace_seconds)

    def _kill_pid(self, pid: int, run_id: str, grace_seconds: float) -> str | None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # ended already (or no pidfd support): nothing to stop
            return None
        try:
            # The process the pidfd holds must still be running after the environment was read: else the pid
            # may be another process's by now.
            if not _runs_flow_run(pid, run_id) or _wait_pidfd(pidfd, 0):
                return None
            _signal_group(pid, signal.SIGTERM)
            # By force only while the leader lives: not our child, it is reaped at once when it ends, and its pid
            # (so the group id) is free again.
            if not _wait_pidfd(pidfd, grace_seconds):
                _signal_group(pid, signal.SIGKILL)
            return f"its process {pid}"
        finally:
            os.close(pidfd)

    async def recover(self) -> list[Recovered]:
        # A process the agent did not start is not its child: its end and exit code cannot be awaited. Such a
        # process vouches for its run itself and reports its own end; a cancel still reaches it (kill_stored).
        return []

    def forget(self, deployment: Deployment) -> None:
        return None  # recover() finds nothing to forget

    def detach(self, deployment: Deployment) -> None:
        process: RunProcess = deployment.handle
        # Reap it when it ends, so it leaves no zombie behind in an agent process that lives on.
        threading.Thread(target=process.wait, name=f"baton-reap-{process.pid}", daemon=True).start()
