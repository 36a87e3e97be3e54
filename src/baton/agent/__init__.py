"""Agents: claim flow runs from the API and deploy them on a platform (DESIGN.md §5).

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev", "staging"]).start()

``DockerAgent`` and ``KubernetesAgent`` are not available yet: importing them raises an ImportError that says so.
"""

from __future__ import annotations

from typing import Any

from baton.agent.base import Agent
from baton.agent.local import LocalAgent

__all__ = ["Agent", "LocalAgent"]

_NOT_YET = {
    "DockerAgent": "the Docker agent (baton agent docker start) is planned but not available yet",
    "KubernetesAgent": "the Kubernetes agent (baton agent kubernetes start) is planned but not available yet",
}


def __getattr__(name: str) -> Any:
    # An ImportError, not an AttributeError: `from baton.agent import DockerAgent` would replace the latter by a
    # bare "cannot import name", losing the reason.
    if name in _NOT_YET:
        raise ImportError(f"baton.agent.{name} is not available: {_NOT_YET[name]}; use LocalAgent for now")
    raise AttributeError(f"module 'baton.agent' has no attribute {name!r}")
