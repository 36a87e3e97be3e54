"""Run by each worker process of a ``DaskExecutor``'s temporary cluster as it starts, before it takes a task (a dask
"preload"): the flow process's ``BATON_*`` variables, the run token (``BATON__API__KEY``) among them, are taken out
of the worker's environment. Its worker processes are spawned from the flow's process, whose environment they
inherit; a task on a worker never needs the token (the flow's process reports for it), so none may read it."""

from __future__ import annotations

import os

PREFIX = "BATON_"


def scrub_environment() -> None:
    """Remove every ``BATON_*`` variable from this process's environment (and so from its children's)."""
    for name in [name for name in os.environ if name.upper().startswith(PREFIX)]:
        del os.environ[name]


scrub_environment()  # on import, in the worker's constructor: before it connects to the scheduler


def dask_setup(worker: object) -> None:
    """Dask's preload hook (a worker process restarted by its nanny imports this module again)."""
    scrub_environment()
