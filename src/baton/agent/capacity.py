"""How many flow runs an agent deploys at once when ``--limit`` is not given: what fits the machine.

An agent without a limit claims whatever is waiting. 200 runs released at once on a 2-core machine then started
200 flow-run processes together (~2.6 GiB), the server behind them missed its 30 s timeouts, and the whole batch
finished later than with 4 at a time (``bench/throughput.py``). The runs of the local and Docker agents share the
agent's host, so their default is sized to it:

* :data:`RUNS_PER_CPU` runs per CPU this process may use (its affinity mask: a container's ``--cpuset-cpus``), since
  a flow run is often waiting on something else (a database, an API), but a queue deeper than this only adds
  context switches;
* at most one run per :data:`MEMORY_PER_RUN` of the memory it may use (the smaller of the machine's and the
  cgroup's ``memory.max``), so a burst of ordinary runs cannot push the host into swap or the OOM killer.

A Kubernetes agent's runs go to the cluster, whose scheduler queues them: it has no default limit. ``--limit 0``
lifts the limit on any agent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

RUNS_PER_CPU = 4
MEMORY_PER_RUN = 256 * 2**20
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")


def run_limit(cpus: int, memory_bytes: int | None) -> int:
    """The default limit for ``cpus`` usable CPUs and ``memory_bytes`` of usable memory (None: unknown)."""
    limit = RUNS_PER_CPU * max(1, cpus)
    if memory_bytes is not None:
        limit = min(limit, memory_bytes // MEMORY_PER_RUN)
    return max(1, limit)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), or the machine's count where there is no such mask."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def usable_memory(read_cgroup_max: Callable[[], str] = CGROUP_MEMORY_MAX.read_text) -> int | None:
    """Bytes of memory this process may use: the machine's, or its cgroup's ``memory.max`` when smaller."""
    try:
        physical: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = None
    try:
        text = read_cgroup_max().strip()
    except OSError:  # no cgroup v2 here
        return physical
    if not text.isdigit():  # "max": no cgroup limit
        return physical
    return int(text) if physical is None else min(int(text), physical)


def host_run_limit() -> int:
    """The default limit of an agent whose runs share its host (local and Docker agents)."""
    return run_limit(usable_cpus(), usable_memory())
