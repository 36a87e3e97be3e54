"""The Kubernetes agent's watch threads and end rules, without a cluster: fake list/watch calls."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")

from kubernetes.client.exceptions import ApiException

from baton.agent.kubernetes_watch import JobWatch


def job(name: str, version: str, **conditions: str) -> Any:
    status = SimpleNamespace(
        conditions=[
            SimpleNamespace(type=kind, status="True", reason=reason, message=None)
            for kind, reason in conditions.items()
        ]
    )
    return SimpleNamespace(metadata=SimpleNamespace(name=name, resource_version=version, labels={}), status=status)


class FakeWatch:
    """Stands in for kubernetes.watch.Watch: each stream() plays the next script (a list of events or an error)."""

    scripts: list[Any] = []
    calls: list[str | None] = []

    def __init__(self) -> None:
        self.resource_version: str | None = None

    def stream(self, _call: Any, _namespace: str, **kwargs: Any) -> Any:
        FakeWatch.calls.append(kwargs.get("resource_version"))
        script = FakeWatch.scripts.pop(0) if FakeWatch.scripts else []
        if isinstance(script, BaseException):
            raise script
        for event in script:
            if event["type"] == "BOOKMARK":
                self.resource_version = event["object"]["metadata"]["resourceVersion"]
            yield event
        time.sleep(0.01)

    def stop(self) -> None:
        return None


def test_bookmarks_expiry_and_errors_never_kill_the_watch_and_a_run_still_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    import baton.agent.kubernetes_watch as module

    monkeypatch.setattr(module.k8s_watch, "Watch", FakeWatch)
    FakeWatch.calls = []
    FakeWatch.scripts = [
        [{"type": "BOOKMARK", "object": {"kind": "Job", "metadata": {"resourceVersion": "7"}}}],  # a plain dict
        ApiException(status=410, reason="Gone"),  # expired: list again
        RuntimeError("something unexpected"),  # reported, retried
        [{"type": "MODIFIED", "object": job("baton-a", "9", Complete="")}],
    ]
    listed = SimpleNamespace(items=[job("baton-a", "5")], metadata=SimpleNamespace(resource_version="5"))
    api = SimpleNamespace(list_namespaced_job=lambda *a, **k: listed, list_namespaced_pod=lambda *a, **k: listed)
    health: list[tuple[str, str | None]] = []
    changed = threading.Event()
    watch = JobWatch(api, api, "ns", lambda status: {}, changed.set, lambda kind, why: health.append((kind, why)))
    watch.track("baton-a", "run-a", retries_possible=False)
    watch.created("baton-a")
    original = watch._follow
    monkeypatch.setattr(watch, "_follow", lambda kind, label: original(kind, label) if kind == "jobs" else None)

    watch.start("agent")
    deadline = time.monotonic() + 10
    while watch.ended("baton-a", 300) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    watch.stop(2.0)

    assert watch.ended("baton-a", 300) is not None
    ended, finished = watch.ended("baton-a", 300)  # type: ignore[misc]
    assert (ended.exit_code, finished) == (0, True)
    assert FakeWatch.calls[:2] == ["5", "7"]  # resumed from the bookmark's version
    assert ("jobs", "RuntimeError: something unexpected") in health
    assert health[-1] == ("jobs", None)
