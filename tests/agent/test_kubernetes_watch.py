"""The Kubernetes agent's watch threads and end rules, without a cluster: fake list/watch calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
    metadata = SimpleNamespace(name=name, resource_version=version, labels={}, uid=f"uid-{name}")
    return SimpleNamespace(metadata=metadata, status=status)


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


def pod_event(pod_uid: str, reason: str, uid: str = "u-1", count: int = 1, kind: str = "Normal") -> Any:
    return SimpleNamespace(
        involved_object=SimpleNamespace(kind="Pod", name=f"pod-{pod_uid}", uid=pod_uid),
        reason=reason,
        message=f"{reason} happened",
        type=kind,
        count=count,
        last_timestamp=None,
        event_time=None,
        first_timestamp=None,
        metadata=SimpleNamespace(uid=uid, creation_timestamp=None, resource_version="3"),
    )


def pod(uid: str, job_name: str, controller_uid: str | None) -> Any:
    owners = [SimpleNamespace(controller=True, kind="Job", uid=controller_uid)] if controller_uid else []
    metadata = SimpleNamespace(
        name=f"pod-{uid}", uid=uid, labels={"job-name": job_name}, owner_references=owners, creation_timestamp=None
    )
    return SimpleNamespace(metadata=metadata, status=None)


def test_events_of_the_jobs_own_pods_become_lines_of_their_runs_logs_and_others_are_ignored() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    api = SimpleNamespace()
    watch = JobWatch(
        api,
        api,
        "ns",
        lambda s: {},
        lambda: None,
        lambda kind, why: None,
        on_log=lambda r, e: lines.extend((r, x) for x in e),
    )
    watch.track("baton-a", "run-a", retries_possible=False, uid="job-a")

    # An event that comes before its pod is kept until the pod is seen
    watch._seen("events", pod_event("p1", "Scheduled", uid="e-1"), deleted=False)
    assert lines == []
    watch._seen("pods", pod("p1", "baton-a", "job-a"), deleted=False)
    watch._seen("events", pod_event("p1", "Pulling", uid="e-2"), deleted=False)
    watch._seen("events", pod_event("p1", "BackOff", uid="e-3", count=2, kind="Warning"), deleted=False)
    watch._seen("events", pod_event("p1", "Gone", uid="e-4"), deleted=True)  # an event's expiry: not news
    # A pod that only claims to be the Job's (its label), and one of another Job: their events go nowhere
    watch._seen("pods", pod("forged", "baton-a", None), deleted=False)
    watch._seen("pods", pod("other", "baton-a", "job-b"), deleted=False)
    watch._seen("events", pod_event("forged", "Pulling", uid="e-5"), deleted=False)
    watch._seen("events", pod_event("other", "Pulling", uid="e-6"), deleted=False)

    assert [(run_id, entry["message"]) for run_id, entry in lines] == [
        ("run-a", "pod pod-p1: Scheduled: Scheduled happened"),
        ("run-a", "pod pod-p1: Pulling: Pulling happened"),
        ("run-a", "pod pod-p1: BackOff: BackOff happened"),
    ]
    assert [entry["level"] for _, entry in lines] == [20, 20, 30]
    assert [entry["key"] for _, entry in lines] == ["k8s-e-1-1", "k8s-e-2-1", "k8s-e-3-2"]
    assert all(entry["name"] == "kubernetes" for _, entry in lines)
    assert watch.newest_pod("baton-a") == "pod-p1"  # nor does a forged pod's log end up in a Failed message


def test_pods_seen_before_the_jobs_uid_is_known_are_judged_once_it_is() -> None:
    api = SimpleNamespace()
    watch = JobWatch(api, api, "ns", lambda s: {"phase": "Pending"}, lambda: None, lambda kind, why: None)
    watch.track("baton-a", "run-a", retries_possible=False)  # its create call has not returned yet

    watch._seen("pods", pod("p1", "baton-a", "job-a"), deleted=False)
    watch._seen("pods", pod("forged", "baton-a", None), deleted=False)
    assert watch.newest_pod("baton-a") is None
    watch.created("baton-a", "job-a")

    assert watch.newest_pod("baton-a") == "pod-p1"
    ended = watch.ended("baton-a", pending_timeout_seconds=0)
    assert ended is not None and "did not start" in (ended[0].message or "")


def flow_pod(uid: str, job_name: str, controller_uid: str, state: dict[str, Any], memory: str | None = None) -> Any:
    """A pod of the Job whose flow container is in ``state`` (its status as the sanitizer gives it)."""
    seen = pod(uid, job_name, controller_uid)
    seen.status = {"phase": "Running", "containerStatuses": [{"name": "flow", "state": state}]}
    limits = {"memory": memory} if memory else None
    seen.spec = SimpleNamespace(containers=[SimpleNamespace(name="flow", resources=SimpleNamespace(limits=limits))])
    return seen


def created_job(now: list[float]) -> JobWatch:
    """A watch, on a clock the test moves (``now[0]``), of Job baton-a, created and with no pod seen yet."""
    api = SimpleNamespace()
    watch = JobWatch(api, api, "ns", dict, lambda: None, lambda kind, why: None, clock=lambda: now[0])
    watch.track("baton-a", "run-a", retries_possible=False, uid="uid-baton-a")
    watch.created("baton-a")
    return watch


def running_job(now: list[float]) -> JobWatch:
    """:func:`created_job`, whose pod p1 runs its flow."""
    watch = created_job(now)
    watch._seen("pods", flow_pod("p1", "baton-a", "uid-baton-a", {"running": {}}), deleted=False)
    return watch


def test_a_failed_job_waits_a_moment_for_its_pods_account_of_the_end() -> None:
    # Given a Job whose pod runs its flow, on an agent whose clock the test moves
    now = [100.0]
    watch = running_job(now)

    # When the Jobs watch reports it Failed before the pods watch reports the container's end
    watch._seen("jobs", job("baton-a", "8", Failed="BackoffLimitExceeded"), deleted=False)

    # Then it is not judged yet, within the grace
    now[0] += 1.0
    assert watch.ended("baton-a", 300) is None
    # And when the pod's account comes, the end says what it was
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    watch._seen("pods", flow_pod("p1", "baton-a", "uid-baton-a", oom), deleted=False)
    ended = watch.ended("baton-a", 300)
    assert ended is not None
    assert (ended[0].exit_code, ended[1]) == (137, True)
    assert "container flow was OOM-killed (OOMKilled) (exit code 137)" in (ended[0].message or "")


# Whether or not its pod was seen: under load the pods watch was seen to tell nothing of a pod that ran and died
@pytest.mark.parametrize("make_watch", [running_job, created_job], ids=["pod-running", "no-pod-seen"])
def test_a_failed_job_whose_pod_says_nothing_is_judged_on_the_jobs_word_after_the_grace(
    make_watch: Callable[[list[float]], JobWatch],
) -> None:
    now = [100.0]
    watch = make_watch(now)
    watch._seen("jobs", job("baton-a", "8", Failed="DeadlineExceeded"), deleted=False)

    now[0] += 4.9
    assert watch.ended("baton-a", 300) is None
    now[0] += 0.2
    ended = watch.ended("baton-a", 300)

    assert ended is not None
    assert (ended[0].exit_code, ended[0].message, ended[1]) == (None, "Job baton-a failed: DeadlineExceeded", True)


def test_a_failed_job_whose_pod_is_first_seen_ended_is_judged_by_the_pod() -> None:
    now = [100.0]
    watch = created_job(now)
    watch._seen("pods", flow_pod("p1", "baton-a", "uid-baton-a", {"waiting": {"reason": "ContainerCreating"}}), False)

    watch._seen("jobs", job("baton-a", "8", Failed="BackoffLimitExceeded"), deleted=False)
    now[0] += 0.5
    assert watch.ended("baton-a", 300) is None
    died = {"terminated": {"exitCode": 3, "reason": "Error"}}
    watch._seen("pods", flow_pod("p1", "baton-a", "uid-baton-a", died), deleted=False)
    ended = watch.ended("baton-a", 300)

    assert ended is not None and ended[0].exit_code == 3 and "(exit code 3)" in (ended[0].message or "")


# The runtime can miss the cgroup's OOM event when the task exits first: "Error", 137, on a memory-limited container
@pytest.mark.parametrize(
    ("memory", "said"),
    [
        ("96Mi", "flow was killed (SIGKILL) with no reason given: out of memory (its limit is 96Mi) unless evicted"),
        (None, "container flow ended: Error (exit code 137)"),
    ],
    ids=["memory-limited", "no-limit"],
)
def test_a_container_killed_with_no_reason_given_names_its_memory_limit(memory: str | None, said: str) -> None:
    now = [100.0]
    watch = created_job(now)
    killed = {"terminated": {"exitCode": 137, "reason": "Error"}}
    watch._seen("pods", flow_pod("p1", "baton-a", "uid-baton-a", killed, memory=memory), deleted=False)
    watch._seen("jobs", job("baton-a", "8", Failed="BackoffLimitExceeded"), deleted=False)

    ended = watch.ended("baton-a", 300)

    assert ended is not None and ended[0].exit_code == 137
    assert said in (ended[0].message or ""), ended[0].message
