"""The default limit of runs at once: sized to the machine for agents whose runs share it (agent/capacity.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from baton.agent.capacity import (
    MEMORY_PER_RUN,
    RUNS_PER_CPU,
    Cgroups,
    host_run_limit,
    run_limit,
    usable_cpus,
    usable_memory,
)
from baton.agent.kubernetes import KubernetesDriver
from baton.agent.local import LocalAgent
from baton.agent.testing import InMemoryDriver
from docker_support import run_container

if TYPE_CHECKING:
    import docker

GiB = 2**30


@pytest.mark.parametrize(
    ("cpus", "memory", "expected"),
    [
        (2, 24 * GiB, 2 * RUNS_PER_CPU),  # CPUs bound it
        (64, 4 * GiB, 4 * GiB // MEMORY_PER_RUN),  # memory bounds it
        (8, None, 8 * RUNS_PER_CPU),  # memory unknown
        (0, None, RUNS_PER_CPU),  # a count of 0 is read as 1
        (4, 100 * 2**20, 1),  # less memory than one run's share: still one at a time, never none
    ],
)
def test_run_limit_is_cpus_times_four_within_the_memory(cpus: int, memory: int | None, expected: int) -> None:
    assert run_limit(cpus, memory) == expected


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")


def v2(tmp_path: Path, path: str, files: dict[str, str]) -> Cgroups:
    write(tmp_path, {"cgroup.controllers": "cpu memory", "proc-self-cgroup": f"0::{path}", **files})
    return Cgroups(root=tmp_path, membership=tmp_path / "proc-self-cgroup")


def test_v2_limits_are_the_smallest_over_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    cgroups = v2(
        tmp_path,
        "/system.slice/agent.service",
        {
            "system.slice/memory.max": str(GiB),  # the parent's limit binds the child
            "system.slice/agent.service/memory.max": "max",
            "system.slice/agent.service/cpu.max": "150000 100000",
            "system.slice/cpu.max": "max 100000",
            "memory.max": "max",  # the root: never limited
        },
    )
    assert cgroups.memory_limit() == GiB
    assert cgroups.cpu_limit() == 1.5
    assert usable_cpus(cgroups) == min(2, len(os.sched_getaffinity(0)))  # 1.5 CPUs: two may run
    assert usable_memory(cgroups) == GiB


def test_no_limits_anywhere_read_as_none(tmp_path: Path) -> None:
    cgroups = v2(tmp_path, "/", {"memory.max": "max", "cpu.max": "max 100000"})
    assert cgroups.memory_limit() is None and cgroups.cpu_limit() is None
    machine = usable_memory(cgroups)
    assert machine is not None and machine > MEMORY_PER_RUN  # the machine's memory
    assert usable_cpus(cgroups) == len(os.sched_getaffinity(0))


def test_a_container_listing_the_hosts_path_reads_its_own_cgroup_at_the_mount(tmp_path: Path) -> None:
    # No cgroup namespace: /proc/self/cgroup names the host's path, which does not exist inside the container.
    cgroups = v2(tmp_path, "/docker/0123abcd", {"memory.max": str(512 * 2**20), "cpu.max": "50000 100000"})
    assert cgroups.memory_limit() == 512 * 2**20
    assert cgroups.cpu_limit() == 0.5
    assert usable_cpus(cgroups) == 1  # half a CPU: one, never none
    assert run_limit(usable_cpus(cgroups), usable_memory(cgroups)) == 2  # 512 MiB / 256 MiB


def test_v1_hierarchies_are_read_per_controller(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "proc-self-cgroup": "12:memory:/batch/agent\n4:cpu,cpuacct:/batch/agent\n0::/",
            "memory/batch/agent/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
            "memory/batch/memory.limit_in_bytes": str(3 * GiB),
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "cpu,cpuacct/batch/agent/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/batch/cpu.cfs_quota_us": "300000",
            "cpu,cpuacct/batch/cpu.cfs_period_us": "100000",
        },
    )
    cgroups = Cgroups(root=tmp_path, membership=tmp_path / "proc-self-cgroup")
    assert cgroups.memory_limit() == 3 * GiB
    assert cgroups.cpu_limit() == 3.0


@pytest.mark.parametrize("membership", ["", "garbage", "0::/", "3:cpu:/x"])
def test_unreadable_or_absent_cgroups_mean_no_limit(tmp_path: Path, membership: str) -> None:
    write(tmp_path, {"proc-self-cgroup": membership})  # and no cgroup files at all
    cgroups = Cgroups(root=tmp_path, membership=tmp_path / "proc-self-cgroup")
    assert cgroups.memory_limit() is None and cgroups.cpu_limit() is None
    assert Cgroups(root=tmp_path, membership=tmp_path / "missing").memory_limit() is None


def test_a_container_with_cpus_and_memory_flags_gets_a_default_limit_to_match(
    docker_client: docker.DockerClient, baton_image: str
) -> None:
    # The real thing: Docker's --cpus 1.5 --memory 768m, read from inside the container (whatever cgroup version).
    code, output = run_container(
        docker_client,
        baton_image,
        ["python", "-c", "from baton.agent.capacity import host_run_limit as h, usable_cpus as c; print(h(), c())"],
        nano_cpus=1_500_000_000,
        mem_limit=768 * 2**20,
    )
    assert code == 0, output
    assert output.split() == ["3", str(min(2, len(os.sched_getaffinity(0))))]  # 768 MiB / 256 MiB; 1.5 -> 2 CPUs


def test_an_agent_without_limit_takes_the_machine_default_and_zero_lifts_it() -> None:
    assert LocalAgent().registry.limit == host_run_limit()
    assert LocalAgent(limit=0).registry.limit is None
    assert LocalAgent(limit=3).registry.limit == 3
    assert "this machine's default" in LocalAgent()._limit_text()
    assert LocalAgent(limit=0)._limit_text() == "no limit on runs at once"


def test_platforms_whose_runs_leave_the_host_have_no_default_limit() -> None:
    assert KubernetesDriver.default_limit is None
    assert InMemoryDriver().default_limit is None
