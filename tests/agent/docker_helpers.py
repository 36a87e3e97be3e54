"""Helpers of the Docker agent's tests: flows in containers, run states, and a private Docker daemon.

The private daemon is for the test that stops and restarts a daemon under a running agent: it is a ``dockerd`` of
the test's own (its own socket, data and exec roots, no bridge, no iptables), so stopping it disturbs no other
test's containers and no other user of the machine's daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import docker
import requests

from baton.client import Client
from baton.schemas.responses import FlowRunRead
from docker_support import skip_or_fail
from support import register_source_flow, wait_for

SLEEPY_FLOW = """
import time
from baton import flow

@flow
def sleepy(seconds: float = 120.0):
    for n in range(3):
        print(f"sleepy line {n}", flush=True)
    time.sleep(seconds)
"""

ENV_FLOW = """
import json, os
from baton import flow

@flow
def envdump():
    with open("/out/env.json", "w") as out:
        json.dump(dict(os.environ), out)
"""

VOLUME_FLOW = """
import os
from pathlib import Path
from baton import flow

@flow
def shared(write: bool = False):
    # /scratch: the agent's anonymous volume (a bare --volume /scratch), a mount of its own, writable
    assert os.path.ismount("/scratch"), "/scratch is not a volume"
    Path("/scratch/note").write_text("scratch")
    text = Path("/shared/in.txt").read_text()
    assert text == "from the host", text
    print(f"read: {text}", flush=True)
    if write:
        Path("/shared/out.txt").write_text("from the container")
"""

HOG_FLOW = """
from baton import flow

@flow
def hog(megabytes: int = 1024):
    chunks = []
    for n in range(megabytes // 16):
        chunks.append(bytearray(b"x") * (16 * 1024 * 1024))  # written, so really resident
        print(f"allocated {16 * (n + 1)} MB", flush=True)
"""

DYING_FLOW = """
import os, sys
from baton import flow

@flow
def dies():
    # Gone before the engine can report anything: only the platform knows how it ended
    print("the disk is on fire", file=sys.stderr, flush=True)
    os._exit(3)
"""


def register_flow(admin: Client, name: str, source: str, entrypoint: str, **run_config: Any) -> None:
    """Register ``source`` (api storage) with a run config of ``run_config`` (type docker unless given)."""
    register_source_flow(
        admin,
        name=name,
        entrypoint=entrypoint,
        source=source,
        tasks=[],
        parameters_schema={},
        run_config={"type": "docker", **run_config},
    )


def wait_state(admin: Client, run_id: str, states: Collection[str], timeout: float = 60) -> FlowRunRead:
    def reached() -> FlowRunRead | None:
        found = admin.get_flow_run(run_id)
        return found if found.state in states else None

    run = wait_for(reached, timeout=timeout, interval=0.2, what=f"run {run_id} to reach {sorted(states)}")
    assert run is not None
    return run


def run_containers(client: docker.DockerClient, run_id: str) -> list[Any]:
    """The containers (running or not) of flow run ``run_id``, as the daemon lists them.

    Sparse: a full listing inspects each listed container in a second request, and one that the agent removes in
    between (tests poll this while the agent removes the container) fails the listing with a 404.
    """
    return list(client.containers.list(all=True, filters={"label": f"io.baton.flow-run-id={run_id}"}, sparse=True))


def submitted_container_id(run: FlowRunRead) -> str:
    [submitted] = [state for state in run.states if state.name == "Submitted"]
    assert submitted.data is not None
    return str(submitted.data["container_id"])


class PrivateDockerd:
    """A ``dockerd`` of the test's own, started and stopped by its pid.

    Args:
        root: holds the socket, the pid file, the data and exec roots and the log (a short path: the socket's
            must fit in 108 bytes).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> PrivateDockerd:
        command = [
            "dockerd",
            f"--host={self.url}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.answers, timeout=timeout, interval=0.2, what=f"the private dockerd ({self.log_path})")
        return self

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the private dockerd exited ({self.process.returncode}):\n{self.log()}")
        # A raw connect first: the SDK leaks its socket when the connect fails.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        try:
            client = docker.DockerClient(base_url=self.url, timeout=5)
        except (docker.errors.DockerException, requests.RequestException):
            return False
        try:
            return bool(client.ping())
        finally:
            client.close()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=120)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to our dockerd (it stops its containers first), SIGKILL if it does not leave in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def remove(self) -> None:
        """Stop it and remove its directory (what it left mounted there first)."""
        self.stop()
        root = str(self.root)
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(root + "/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def private_dockerd() -> PrivateDockerd:
    """A started private daemon, or skip (fail under CI=true) where one cannot run here."""
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        skip_or_fail("a private dockerd needs root and the dockerd binary")
    root = Path(tempfile.mkdtemp(prefix="baton-dockerd-", dir="/tmp"))
    daemon = PrivateDockerd(root)
    try:
        return daemon.start()
    except BaseException:
        daemon.remove()
        raise


def copy_image(source: docker.DockerClient, target: docker.DockerClient, tag: str) -> None:
    """Copy image ``tag`` from one daemon to another (save, streamed into load; no registry)."""
    target.api.load_image(source.api.get_image(tag, chunk_size=1024 * 1024))
    target.images.get(tag)  # raises if the load did not give it its tag
