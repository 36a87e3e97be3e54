"""Baton: an agent-based workflow orchestrator with hybrid execution.

Public names are loaded lazily, so that ``python -m baton.engine`` (paid by every flow run) imports only what it
uses.

Usage::

    from baton import flow, task, Client, LocalRun
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "flow": "baton.sdk.flows",
    "task": "baton.sdk.tasks",
    "Flow": "baton.sdk.flows",
    "Task": "baton.sdk.tasks",
    "LocalRun": "baton.sdk.run_configs",
    "UniversalRun": "baton.sdk.run_configs",
    "DockerRun": "baton.sdk.run_configs",
    "KubernetesRun": "baton.sdk.run_configs",
    "Client": "baton.client.http",
    "CronSchedule": "baton.sdk.schedules",
    "IntervalSchedule": "baton.sdk.schedules",
    "RRuleSchedule": "baton.sdk.schedules",
    "APIStorage": "baton.sdk.storage",
    "LocalStorage": "baton.sdk.storage",
    "DockerStorage": "baton.sdk.storage",
    "GitStorage": "baton.sdk.storage",
    "SequentialExecutor": "baton.sdk.executors",
    "ThreadExecutor": "baton.sdk.executors",
    "ProcessExecutor": "baton.sdk.executors",
    "DaskExecutor": "baton.sdk.dask_executor",
    "TaskFuture": "baton.sdk.futures",
    "UpstreamFailed": "baton.sdk.futures",
    "as_completed": "baton.sdk.futures",
    "unmapped": "baton.sdk.futures",
    "wait": "baton.sdk.futures",
}

if TYPE_CHECKING:
    from baton.client.http import Client
    from baton.sdk.dask_executor import DaskExecutor
    from baton.sdk.executors import ProcessExecutor, SequentialExecutor, ThreadExecutor
    from baton.sdk.flows import Flow, flow
    from baton.sdk.futures import TaskFuture, UpstreamFailed, as_completed, unmapped, wait
    from baton.sdk.run_configs import DockerRun, KubernetesRun, LocalRun, UniversalRun
    from baton.sdk.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
    from baton.sdk.storage import APIStorage, DockerStorage, GitStorage, LocalStorage
    from baton.sdk.tasks import Task, task

__all__ = [
    "APIStorage",
    "Client",
    "CronSchedule",
    "DaskExecutor",
    "DockerRun",
    "DockerStorage",
    "Flow",
    "GitStorage",
    "IntervalSchedule",
    "KubernetesRun",
    "LocalRun",
    "LocalStorage",
    "ProcessExecutor",
    "RRuleSchedule",
    "SequentialExecutor",
    "Task",
    "TaskFuture",
    "ThreadExecutor",
    "UniversalRun",
    "UpstreamFailed",
    "__version__",
    "as_completed",
    "flow",
    "task",
    "unmapped",
    "wait",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'baton' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
