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


def pod_event(pod: str, reason: str, uid: str = "u-1", count: int = 1, kind: str = "Normal") -> Any:
    return SimpleNamespace(
        involved_object=SimpleNamespace(kind="Pod", name=pod),
        reason=reason,
        message=f"{reason} happened",
        type=kind,
        count=count,
        last_timestamp=None,
        event_time=None,
        first_timestamp=None,
        metadata=SimpleNamespace(uid=uid, creation_timestamp=None, resource_version="3"),
    )


def test_events_of_the_agents_pods_become_lines_of_their_runs_logs_and_others_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import baton.agent.kubernetes_watch as module

    monkeypatch.setattr(module.k8s_watch, "Watch", FakeWatch)
    FakeWatch.calls = []
    FakeWatch.scripts = [
        [
            {"type": "ADDED", "object": pod_event("baton-a-x1y2z", "Pulling", uid="u-2")},
            {"type": "ADDED", "object": pod_event("someone-else-abcde", "Pulling", uid="u-3")},  # not the agent's
            {"type": "ADDED", "object": pod_event("baton-a-x1y2z-extra", "Pulling", uid="u-4")},  # another Job's
            {"type": "MODIFIED", "object": pod_event("baton-a-x1y2z", "BackOff", uid="u-5", count=2, kind="Warning")},
            {"type": "DELETED", "object": pod_event("baton-a-x1y2z", "Gone", uid="u-6")},  # expiry: not news
        ]
    ]
    listed = SimpleNamespace(
        items=[pod_event("baton-a-x1y2z", "Scheduled")], metadata=SimpleNamespace(resource_version="2")
    )
    api = SimpleNamespace(list_namespaced_event=lambda *a, **k: listed)
    lines: list[tuple[str, dict[str, Any]]] = []
    got = threading.Event()

    def on_log(run_id: str, entries: list[dict[str, Any]]) -> None:
        lines.extend((run_id, entry) for entry in entries)
        if len(lines) >= 3:
            got.set()

    watch = JobWatch(api, api, "ns", lambda s: {}, lambda: None, lambda kind, why: None, on_log=on_log)
    watch.track("baton-a", "run-a", retries_possible=False)
    original = watch._follow
    monkeypatch.setattr(watch, "_follow", lambda kind, label: original(kind, label) if kind == "events" else None)
    watch.start("agent")
    assert got.wait(10)
    watch.stop(2.0)

    assert [(run_id, entry["message"]) for run_id, entry in lines] == [
        ("run-a", "pod baton-a-x1y2z: Scheduled: Scheduled happened"),
        ("run-a", "pod baton-a-x1y2z: Pulling: Pulling happened"),
        ("run-a", "pod baton-a-x1y2z: BackOff: BackOff happened"),
    ]
    assert [entry["level"] for _, entry in lines] == [20, 20, 30]
    assert [entry["key"] for _, entry in lines] == ["k8s-u-1-1", "k8s-u-2-1", "k8s-u-5-2"]
    assert all(entry["name"] == "kubernetes" for _, entry in lines)
