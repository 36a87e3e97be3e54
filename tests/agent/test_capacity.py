"""The default limit of runs at once: sized to the machine for agents whose runs share it (agent/capacity.py)."""

from __future__ import annotations

import pytest

from baton.agent.capacity import MEMORY_PER_RUN, RUNS_PER_CPU, host_run_limit, run_limit, usable_memory
from baton.agent.kubernetes import KubernetesDriver
from baton.agent.local import LocalAgent
from baton.agent.testing import InMemoryDriver

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


def test_usable_memory_is_the_smaller_of_the_machine_and_the_cgroup() -> None:
    machine = usable_memory(lambda: "max\n")
    assert machine is not None and machine > MEMORY_PER_RUN
    assert usable_memory(lambda: f"{GiB}\n") == min(GiB, machine)
    assert usable_memory(lambda: f"{machine * 4}\n") == machine  # a cgroup limit above the machine's memory

    def no_cgroup() -> str:
        raise FileNotFoundError("/sys/fs/cgroup/memory.max")

    assert usable_memory(no_cgroup) == machine


def test_an_agent_without_limit_takes_the_machine_default_and_zero_lifts_it() -> None:
    assert LocalAgent().registry.limit == host_run_limit()
    assert LocalAgent(limit=0).registry.limit is None
    assert LocalAgent(limit=3).registry.limit == 3
    assert "this machine's default" in LocalAgent()._limit_text()
    assert LocalAgent(limit=0)._limit_text() == "no limit on runs at once"


def test_platforms_whose_runs_leave_the_host_have_no_default_limit() -> None:
    assert KubernetesDriver.default_limit is None
    assert InMemoryDriver().default_limit is None
