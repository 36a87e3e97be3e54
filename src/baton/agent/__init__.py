"""Agents: claim flow runs from the API and deploy them on a platform (DESIGN.md §5).

Usage::

    from baton.agent import LocalAgent

    LocalAgent(labels=["dev", "staging"]).start()
    Agent(LocalDriver(LocalOptions(import_paths=["/srv/flows"])), labels=["dev"]).start()  # composed by hand
    DockerAgent(labels=["dev"], networks=["host"]).start()  # needs the docker extra: pip install 'baton[docker]'
    DockerAgent(policy=DockerPolicy(allow_host_config=["privileged"])).start()  # what run configs may ask

Every name is imported on first use: ``DockerAgent`` so that ``baton.agent`` works without the docker SDK, and all
of them so that the CLI, which reads ``baton.agent.docker_policy`` to build its options, does not load the agents
(and their HTTP client) on every command. ``DockerAgent`` needs ``baton[docker]``, ``KubernetesAgent``
``baton[kubernetes]``: without it, importing one raises an ImportError that says which to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton.agent.base import Agent
    from baton.agent.docker import DockerAgent, DockerDriver
    from baton.agent.docker_policy import DockerPolicy
    from baton.agent.docker_spec import DockerOptions
    from baton.agent.driver import Deployment, Driver, DriverEvents, Ended
    from baton.agent.kubernetes import KubernetesAgent, KubernetesDriver
    from baton.agent.kubernetes_spec import KubernetesOptions
    from baton.agent.local import LocalAgent, LocalDriver, LocalOptions

__all__ = [
    "Agent",
    "Deployment",
    "DockerAgent",
    "DockerDriver",
    "DockerOptions",
    "DockerPolicy",
    "Driver",
    "DriverEvents",
    "Ended",
    "KubernetesAgent",
    "KubernetesDriver",
    "KubernetesOptions",
    "LocalAgent",
    "LocalDriver",
    "LocalOptions",
]

_MODULES = {
    "Agent": "baton.agent.base",
    "Deployment": "baton.agent.driver",
    "DockerPolicy": "baton.agent.docker_policy",
    "Driver": "baton.agent.driver",
    "DriverEvents": "baton.agent.driver",
    "Ended": "baton.agent.driver",
    "LocalAgent": "baton.agent.local",
    "LocalDriver": "baton.agent.local",
    "LocalOptions": "baton.agent.local",
    "KubernetesOptions": "baton.agent.kubernetes_spec",
}
# Classes whose module needs an extra: (module, the extra, the import names that mean it is missing).
_EXTRAS = {
    "DockerAgent": ("baton.agent.docker", "docker", ("docker", "requests")),
    "DockerDriver": ("baton.agent.docker", "docker", ("docker", "requests")),
    "DockerOptions": ("baton.agent.docker_spec", "docker", ("docker", "requests")),
    "KubernetesAgent": ("baton.agent.kubernetes", "kubernetes", ("kubernetes", "yaml", "urllib3")),
    "KubernetesDriver": ("baton.agent.kubernetes", "kubernetes", ("kubernetes", "yaml", "urllib3")),
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    if name in _EXTRAS:
        module_name, extra, needs = _EXTRAS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith(needs):
                raise
            # An ImportError, not an AttributeError: `from baton.agent import X` would replace the latter by a bare
            # "cannot import name", losing the reason.
            raise ImportError(
                f"baton.agent.{name} needs the {extra} extra ({exc}): pip install 'baton[{extra}]'"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module 'baton.agent' has no attribute {name!r}")
