"""How many flow runs an agent deploys at once when ``--limit`` is not given: what fits the machine.

An agent without a limit claims whatever is waiting. 200 runs released at once on a 2-core machine then started
200 flow-run processes together (~2.6 GiB), the server behind them missed its 30 s timeouts, and the whole batch
finished later than with 4 at a time (``bench/throughput.py``). The runs of the local and Docker agents share the
agent's host, so their default is sized to it:

* :data:`RUNS_PER_CPU` runs per CPU this process may use (its affinity mask: a container's ``--cpuset-cpus``; and
  its cgroup's CPU quota: ``--cpus``), since a flow run is often waiting on something else (a database, an API),
  but a queue deeper than this only adds context switches;
* at most one run per :data:`MEMORY_PER_RUN` of the memory it may use (the smaller of the machine's and its
  cgroup's memory limit: ``--memory``), so a burst of ordinary runs cannot push the host into swap or the OOM
  killer.

Cgroup limits are read for this process's own cgroup and every ancestor up to the mount (a parent's limit binds its
children), on cgroup v2 (``memory.max``, ``cpu.max``) and v1 (``memory.limit_in_bytes``, ``cpu.cfs_quota_us``).

A Kubernetes agent's runs go to the cluster, whose scheduler queues them: it has no default limit. ``--limit 0``
lifts the limit on any agent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUNS_PER_CPU = 4
MEMORY_PER_RUN = 256 * 2**20


def run_limit(cpus: int, memory_bytes: int | None) -> int:
    """The default limit for ``cpus`` usable CPUs and ``memory_bytes`` of usable memory (None: unknown)."""
    limit = RUNS_PER_CPU * max(1, cpus)
    if memory_bytes is not None:
        limit = min(limit, memory_bytes // MEMORY_PER_RUN)
    return max(1, limit)


@dataclass(frozen=True)
class Cgroups:
    """This process's cgroup limits, read from ``membership`` (``/proc/self/cgroup``) and the tree at ``root``."""

    root: Path = Path("/sys/fs/cgroup")
    membership: Path = Path("/proc/self/cgroup")

    def memory_limit(self) -> int | None:
        """The smallest memory limit over this cgroup and its ancestors, in bytes; None where none is set."""
        limits = [
            value
            for directory in self._directories("memory")
            for value in (_integer(directory / "memory.max"), _integer(directory / "memory.limit_in_bytes"))
            if value is not None and value >= 0
        ]
        return min(limits, default=None)

    def cpu_limit(self) -> float | None:
        """The smallest CPU quota over this cgroup and its ancestors, in CPUs (0.5: half of one); None: none set."""
        quotas: list[float] = []
        for directory in self._directories("cpu"):
            quota = _cpu_max(directory / "cpu.max")
            if quota is None:
                period = _integer(directory / "cpu.cfs_period_us")
                microseconds = _integer(directory / "cpu.cfs_quota_us")
                if period and microseconds is not None and microseconds > 0:  # -1: no quota
                    quota = microseconds / period
            if quota is not None:
                quotas.append(quota)
        return min(quotas, default=None)

    def _directories(self, controller: str) -> Iterator[Path]:
        """The directory of this process's cgroup holding ``controller``, then each ancestor up to the mount."""
        found = self._mount_and_path(controller)
        if found is None:
            return
        mount, path = found
        directory = mount / path.lstrip("/")
        if not directory.is_dir():
            # Without a cgroup namespace, a container lists the host's path but has its own cgroup mounted at the
            # root: that root is the one to read.
            directory = mount
        while True:
            yield directory
            if directory == mount or mount not in directory.parents:
                return
            directory = directory.parent

    def _mount_and_path(self, controller: str) -> tuple[Path, str] | None:
        try:
            lines = self.membership.read_text().splitlines()
        except OSError:  # not Linux
            return None
        unified: str | None = None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if controller in controllers.split(","):  # v1: a hierarchy of its own (mounted as "cpu,cpuacct" too)
                for name in (controller, controllers):
                    if (self.root / name).is_dir():
                        return self.root / name, path
            elif controllers == "":
                unified = path
        # v2: one tree, at the root (pure v2) or at ``unified`` (hybrid, where it rarely holds controllers)
        if unified is not None:
            for mount in (self.root, self.root / "unified"):
                if (mount / "cgroup.controllers").is_file():
                    return mount, unified
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # no such file in this cgroup version, or not readable
        return None


def _integer(path: Path) -> int | None:
    text = _read(path)
    if text is None or not text.lstrip("-").isdigit():  # "max": no limit
        return None
    return int(text)


def _cpu_max(path: Path) -> float | None:
    """``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" for none) in CPUs."""
    fields = (_read(path) or "").split()
    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit() or int(fields[1]) == 0:
        return None
    return int(fields[0]) / int(fields[1])


def usable_cpus(cgroups: Cgroups | None = None) -> int:
    """CPUs this process may run on (its affinity mask, or the machine's count), within its cgroup's CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = (cgroups or Cgroups()).cpu_limit()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def usable_memory(cgroups: Cgroups | None = None) -> int | None:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when smaller."""
    try:
        physical: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = None
    limit = (cgroups or Cgroups()).memory_limit()
    if limit is None:
        return physical
    return limit if physical is None else min(limit, physical)


def host_run_limit() -> int:
    """The default limit of an agent whose runs share its host (local and Docker agents)."""
    cgroups = Cgroups()
    return run_limit(usable_cpus(cgroups), usable_memory(cgroups))
