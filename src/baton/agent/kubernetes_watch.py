"""What the Kubernetes agent knows of its Jobs, and how a run ends: two watch threads (Jobs, pods) and the rules
that read their state (``kubernetes.py`` deploys and deletes).

Each thread lists the agent's own objects (label ``baton.io/agent``), then follows the watch API from that list's
resourceVersion; a watch that times out resumes where it was (its bookmarks keep the version fresh), one that
expired (410 Gone) lists again, any other failure marks that kind unusable (the agent claims nothing) and is
retried with backoff. Nothing lists every Job on every tick.

Usage::

    watch = JobWatch(batch_api, core_api, namespace, sanitize, on_change, on_health)
    watch.start(agent_label)
    watch.track(name, run_id, retries_possible=False)
    ended = watch.ended(name, pending_timeout_seconds=300)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from baton.agent.driver import Ended
from baton.agent.kubernetes_spec import CONTAINER_NAME, LABEL_AGENT
from baton.schemas.actions import MAX_MESSAGE_LENGTH

logger = logging.getLogger("baton.agent")

# Waiting reasons of the flow container that no wait will cure. ErrImagePull (a registry's rate limit, say),
# CreateContainerError and CreateContainerConfigError (a busy kubelet's "failed to sync secret cache") may pass: a
# pod stuck on them ends at the pending timeout; ImagePullBackOff follows a repeated ErrImagePull.
CANNOT_START = frozenset({"ErrImageNeverPull", "ImagePullBackOff", "InvalidImageName", "RunContainerError"})
_STARTED_PHASES = frozenset({"Running", "Succeeded", "Failed"})
_SIGKILL_EXIT = 128 + 9
_MEMORY_LIMIT = "batonFlowMemoryLimit"  # kept beside a pod's status: its flow container's memory limit
# Watches end server-side after this long and resume from their resourceVersion (below the API server's limits).
WATCH_SECONDS = 60
# A Job's Failed condition and its pod's account of the end (OOMKilled, the exit code) come on two watches: a Job
# failed while its pod's termination is not seen yet waits this long for it before it is judged on the Job's word.
ACCOUNT_GRACE_SECONDS = 5.0
EARLY_EVENTS = 256  # pod events kept until their pod is seen (the events and pods watches are two threads)
API_TIMEOUT_SECONDS = 30


@dataclass
class JobView:
    """What the watches know of one of the agent's Jobs."""

    name: str
    run_id: str
    since: float  # when the agent created it, on its clock
    retries_possible: bool = False  # backoffLimit > 0 or restartPolicy OnFailure: only the Job's verdict counts
    created: bool = False  # its create call returned: from now on, missing from a list means deleted
    complete: bool = False
    failed_reason: str | None = None
    failed_seen: float | None = None  # when the watch first saw the Job Failed, on the agent's clock
    gone: bool = False
    uid: str | None = None  # the Job's uid: its pods are those it controls (ownerReferences), not those named so
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod name -> its status (a dict)
    pod_uids: set[str] = field(default_factory=set)
    # Pods seen before the Job's uid was known (its create call had not returned): judged once it is
    unverified: dict[str, Any] = field(default_factory=dict)


class JobWatch:
    """The agent's Jobs and their pods, as two watch threads see them. Thread-safe.

    Args:
        batch: a ``BatchV1Api``. core: a ``CoreV1Api``. namespace: the agent's.
        sanitize: turns a client object into plain dicts (``ApiClient.sanitize_for_serialization``).
        on_change: called (from a watch thread) after each change, so the agent inspects its runs now.
        on_health: called with None when the API server answers, with the reason when it does not.
        clock: measures how long Jobs wait for a pod.
        on_log: called (from the events thread) with a run's id and log lines made of its pod's events; None:
            events are not watched.
    """

    def __init__(
        self,
        batch: Any,
        core: Any,
        namespace: str,
        sanitize: Callable[[Any], Any],
        on_change: Callable[[], None],
        on_health: Callable[[str, str | None], None],
        clock: Callable[[], float] = time.monotonic,
        on_log: Callable[[str, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._batch, self._core, self._namespace = batch, core, namespace
        self._sanitize = sanitize
        self._on_change, self._on_health = on_change, on_health
        self._on_log = on_log
        self._clock = clock
        self._views: dict[str, JobView] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streaming: dict[str, Any] = {}  # kind -> the ``Watch`` its thread reads now (cut by stop)
        self._events_failing = False
        self._pod_jobs: dict[str, str] = {}  # pod uid -> its Job's name, for events
        # Events that came before their pod did (another thread watches pods): matched when it comes
        self._early_events: deque[Any] = deque(maxlen=EARLY_EVENTS)
        self._ready: list[tuple[str, dict[str, Any]]] = []  # lines of early events, to send outside the lock
        self.watch_seconds = WATCH_SECONDS  # tests shorten it

    # --- the views -------------------------------------------------------------------------------

    def track(self, name: str, run_id: str, retries_possible: bool, uid: str | None = None) -> None:
        with self._lock:
            self._views[name] = JobView(name, run_id, self._clock(), retries_possible, uid=uid)

    def created(self, name: str, uid: str | None = None) -> None:
        with self._lock:
            view = self._views.get(name)
            if view is not None:
                view.created = True
                if uid:
                    self._set_uid(view, uid)
            ready, self._ready = self._ready, []
        self._emit(ready)

    def forget(self, name: str) -> None:
        with self._lock:
            view = self._views.pop(name, None)
            for pod_uid in view.pod_uids if view is not None else ():
                self._pod_jobs.pop(pod_uid, None)

    def gone(self, name: str) -> bool:
        """Whether the Job is known to be deleted (or not tracked at all)."""
        with self._lock:
            view = self._views.get(name)
            return view is None or view.gone

    def ended(self, name: str, pending_timeout_seconds: float) -> tuple[Ended, bool] | None:
        """How the Job's run ended, and whether Kubernetes itself finished the Job (Complete or Failed: its pods
        are done); None while it runs, or when the Job is not tracked."""
        with self._lock:
            view = self._views.get(name)
            return None if view is None else _ended(view, self._clock(), pending_timeout_seconds)

    def newest_pod(self, name: str) -> str | None:
        """The name of the Job's newest pod, as the pods watch saw it; None if none."""
        with self._lock:
            view = self._views.get(name)
            if view is None or not view.pods:
                return None
            return max(view.pods, key=lambda pod: view.pods[pod].get("creationTimestamp") or "")

    # --- the threads -----------------------------------------------------------------------------

    def start(self, agent_label: str) -> None:
        for kind in ("jobs", "pods", "events") if self._on_log is not None else ("jobs", "pods"):
            thread = threading.Thread(
                target=self._follow, args=(kind, agent_label), name=f"baton-k8s-{kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        """Stop the threads, waiting up to ``timeout`` seconds in all.

        A thread reading a watch is blocked in the socket for up to ``watch_seconds``: its connection is shut down
        under it. Closing the API client would not do it (its pool closes idle connections only), and a watch left
        open holds the thread, its connection, and an API server's graceful shutdown (which waits for it).
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        # Again until they have ended: a watch whose request was still on its way had no socket to cut yet.
        while any(thread.is_alive() for thread in self._threads) and time.monotonic() < deadline:
            with self._lock:
                streaming = list(self._streaming.values())
            for watcher in streaming:
                _cut(watcher)
            for thread in self._threads:
                thread.join(min(0.05, max(deadline - time.monotonic(), 0.0)))

    def _follow(self, kind: str, agent_label: str) -> None:
        list_call, selector = self._source(kind, agent_label)
        pause = 0.5
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = list_call(self._namespace, **selector, _request_timeout=API_TIMEOUT_SECONDS)
                    self._seen_list(kind, listed.items)
                    version = listed.metadata.resource_version
                    self._healthy(kind, None)
                version = self._watch(kind, list_call, selector, version)
                pause = 0.5
                continue
            except ApiException as exc:
                if exc.status == 410:  # the resourceVersion expired: list again
                    version = None
                    continue
                problem = f"{exc.status} {exc.reason}"
            except Exception as exc:  # a watch thread must never die: the agent would stop seeing its runs end
                problem = f"{type(exc).__name__}: {exc}"
                version = None
            if self._stop.is_set():  # the agent is leaving: its connections are being closed under the watch
                return
            self._healthy(kind, problem)
            self._stop.wait(pause)
            pause = min(pause * 2, 10.0 if kind != "events" else 60.0)

    def _source(self, kind: str, agent_label: str) -> tuple[Any, dict[str, str]]:
        """What a kind's thread lists and watches: the agent's Jobs and pods by label; the namespace's pod events
        (events carry no labels: they are matched to Jobs by their pod's name)."""
        if kind == "events":
            return self._core.list_namespaced_event, {"field_selector": "involvedObject.kind=Pod"}
        list_call = self._batch.list_namespaced_job if kind == "jobs" else self._core.list_namespaced_pod
        return list_call, {"label_selector": f"{LABEL_AGENT}={agent_label}"}

    def _healthy(self, kind: str, problem: str | None) -> None:
        """Jobs and pods make the agent's health; events only reach logs: their failure is said once, not fatal."""
        if kind != "events":
            self._on_health(kind, problem)
            return
        if problem is not None and not self._events_failing:
            logger.warning("cannot watch the namespace's events (%s): pod events do not reach the runs' logs", problem)
        self._events_failing = problem is not None

    def _watch(self, kind: str, list_call: Any, selector: dict[str, str], version: str) -> str | None:
        watcher = k8s_watch.Watch()
        with self._lock:
            self._streaming[kind] = watcher
        stream = watcher.stream(
            list_call,
            self._namespace,
            **selector,
            resource_version=version,
            timeout_seconds=self.watch_seconds,
            allow_watch_bookmarks=True,
            _request_timeout=self.watch_seconds + 10,
        )
        try:
            if self._stop.is_set():  # the stop began before this watch was listed to be cut
                return version
            for event in stream:
                self._healthy(kind, None)
                if self._stop.is_set():
                    break
                # A BOOKMARK's object comes as a plain dict: only its resourceVersion matters
                if event["type"] != "BOOKMARK":
                    self._seen(kind, event["object"], deleted=event["type"] == "DELETED")
        finally:
            with self._lock:
                self._streaming.pop(kind, None)
            watcher.stop()
        return watcher.resource_version or version

    def _seen_list(self, kind: str, items: list[Any]) -> None:
        if kind == "events":
            for item in items:
                self._seen_event(item)
            return
        present = {item.metadata.name for item in items}
        with self._lock:
            for item in items:
                self._seen_one(kind, item, deleted=False)
            if kind == "jobs":  # a Job deleted while no watch ran
                for view in self._views.values():
                    if view.created and view.name not in present:
                        view.gone = True
            else:
                for view in self._views.values():
                    for pod in [pod for pod in view.pods if pod not in present]:
                        del view.pods[pod]
            ready, self._ready = self._ready, []
        self._emit(ready)
        self._on_change()

    def _seen(self, kind: str, obj: Any, deleted: bool) -> None:
        if kind == "events":
            if not deleted:  # an event's expiry is not news
                self._seen_event(obj)
            return
        with self._lock:
            self._seen_one(kind, obj, deleted)
            ready, self._ready = self._ready, []
        self._emit(ready)
        self._on_change()

    def _seen_one(self, kind: str, obj: Any, deleted: bool) -> None:
        if kind == "jobs":
            view = self._views.get(obj.metadata.name)
            if view is not None:
                self._set_uid(view, str(obj.metadata.uid))  # a Job's name is unique while it exists
                _record_job(view, obj, deleted, self._clock())
            return
        job_name = (obj.metadata.labels or {}).get("job-name")
        view = self._views.get(job_name) if job_name else None
        if view is None:
            return
        if view.uid is None:
            if deleted:
                view.unverified.pop(obj.metadata.name, None)
            else:
                view.unverified[obj.metadata.name] = obj
            return
        # The Job's own pods only: anyone may label a pod job-name=<ours>, not make our Job its controller
        if _controller_uid(obj) == view.uid:
            self._record_pod(view, obj, deleted)

    def _set_uid(self, view: JobView, uid: str) -> None:
        """Under the lock: the Job's uid is known; the pods seen before are judged now."""
        if view.uid is not None:
            return
        view.uid = uid
        waiting, view.unverified = list(view.unverified.values()), {}
        for pod in waiting:
            if _controller_uid(pod) == uid:
                self._record_pod(view, pod, deleted=False)

    def _record_pod(self, view: JobView, obj: Any, deleted: bool) -> None:
        if deleted:
            view.pods.pop(obj.metadata.name, None)
            return
        status = self._sanitize(obj.status) if obj.status else {}
        status["creationTimestamp"] = str(obj.metadata.creation_timestamp or "")
        status[_MEMORY_LIMIT] = _flow_memory_limit(obj)
        view.pods[obj.metadata.name] = status
        pod_uid = str(obj.metadata.uid)
        if pod_uid not in view.pod_uids:
            view.pod_uids.add(pod_uid)
            self._pod_jobs[pod_uid] = view.name
            self._release_early_events(pod_uid)

    def _seen_event(self, event: Any) -> None:
        """Send a pod event to its run's logs, matched by the pod's uid (a name can be copied, a uid cannot)."""
        with self._lock:
            found = self._event_run(event)
            if found is None:
                self._early_events.append(event)
                return
        self._emit([found])

    def _event_run(self, event: Any) -> tuple[str, dict[str, Any]] | None:
        involved = event.involved_object
        job_name = self._pod_jobs.get(str(getattr(involved, "uid", "") or ""))
        view = self._views.get(job_name) if job_name else None
        if view is None:
            return None
        return view.run_id, event_line(event, str(getattr(involved, "name", "") or ""))

    def _release_early_events(self, pod_uid: str) -> None:
        """Called under the lock when a pod of ours is first seen: send the events that came before it."""
        waiting = [event for event in self._early_events if str(getattr(event.involved_object, "uid", "")) == pod_uid]
        for event in waiting:
            self._early_events.remove(event)
        # Sent by the caller once it lets the lock go (_seen, _seen_list)
        self._ready.extend(line for line in (self._event_run(event) for event in waiting) if line is not None)

    def _emit(self, lines: list[tuple[str, dict[str, Any]]]) -> None:
        if self._on_log is None:
            return
        for run_id, line in lines:
            self._on_log(run_id, [line])


def _cut(watcher: Any) -> None:
    """Wake the thread reading ``watcher``'s response by shutting its socket down (closing a socket does not wake
    a read blocked on it). ``_resp`` is where the client's ``Watch.stream`` keeps the response it reads; a watch
    whose request is still being sent has none yet: ``stop`` cuts again until its thread has ended."""
    response = getattr(watcher, "_resp", None)
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def event_line(event: Any, pod: str) -> dict[str, Any]:
    """A pod's event as a line of its run's logs (``LogEntry`` fields): a Warning at WARNING, others at INFO; its
    key (uid and count) makes a repeat of the same event (a relist, a restarted agent) one line."""
    when = event.last_timestamp or event.event_time or event.first_timestamp or event.metadata.creation_timestamp
    text = f"pod {pod}: {event.reason or 'Event'}: {event.message or ''}".strip()
    return {
        "key": f"k8s-{event.metadata.uid}-{event.count or 1}"[:64],
        "timestamp": (when or datetime.now(UTC)).isoformat(),
        "level": 30 if event.type == "Warning" else 20,
        "name": "kubernetes",
        "message": text[:MAX_MESSAGE_LENGTH],
    }


def _controller_uid(pod: Any) -> str | None:
    for owner in pod.metadata.owner_references or []:
        if owner.controller and owner.kind == "Job":
            return str(owner.uid)
    return None


def _record_job(view: JobView, job: Any, deleted: bool, now: float) -> None:
    view.gone = view.gone or deleted
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            view.complete = True
        elif condition.type == "Failed":
            reason = condition.reason or "Failed"
            view.failed_reason = f"{reason}: {condition.message}" if condition.message else reason
            if view.failed_seen is None:
                view.failed_seen = now


def _ended(view: JobView, now: float, pending_timeout: float) -> tuple[Ended, bool] | None:
    if view.complete:
        return Ended(0), True
    flow = _flow_container_status(view)
    state = flow.get("state", {}) if flow is not None else {}
    if _awaiting_account(view, state, now):
        return None  # not judged yet, on no rule: the container's own account of its end is on its way
    return _verdict(view, state) or _stuck(view, state, now - view.since, pending_timeout)


def _awaiting_account(view: JobView, state: dict[str, Any], now: float) -> bool:
    """Whether the Job failed moments ago and its flow container's end is not seen yet: the pods watch, which lags
    the Jobs watch, will tell how it ended (OOMKilled, the exit code) within ``ACCOUNT_GRACE_SECONDS``.

    Whatever the container was last seen doing: under load the pods watch was seen to report nothing of a pod that
    started, ran and died (exit code 3) before the Jobs watch reported its Job Failed. A Job that failed with no pod
    ever running (a deadline, a quota) is judged on its word after the grace, a few seconds late.
    """
    return (
        view.failed_seen is not None
        and now - view.failed_seen < ACCOUNT_GRACE_SECONDS
        and not state.get("terminated")
        and not view.gone
    )


def _verdict(view: JobView, state: dict[str, Any]) -> tuple[Ended, bool] | None:
    """The end the Job or its flow container tells."""
    terminated = state.get("terminated")
    if view.failed_reason is not None:
        if terminated:  # the container's own account says more (OOMKilled, the exit code)
            return _terminated(view, terminated), True
        return Ended(None, f"Job {view.name} failed: {view.failed_reason}"), True
    if terminated and not view.retries_possible:
        code = terminated.get("exitCode")
        if code != 0:
            return _terminated(view, terminated), False
        if view.gone:  # the run finished, and the Job went before it said Complete
            return Ended(0), True
    return None


def _stuck(view: JobView, state: dict[str, Any], age: float, pending_timeout: float) -> tuple[Ended, bool] | None:
    """The end of a Job that will never run its flow: a container that cannot start, a Job gone, no pod."""
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in CANNOT_START:
        message = f"{waiting['reason']} {waiting.get('message') or ''}".strip()
        return Ended(None, f"Job {view.name}: the flow container cannot start: {message}"), False
    if view.gone:
        return Ended(None, f"Job {view.name} was deleted before its run ended"), True
    started = any(pod.get("phase") in _STARTED_PHASES for pod in view.pods.values())
    if not started and age >= pending_timeout:
        why = _pending_reason(view) or "no pod of it started"
        return Ended(None, f"Job {view.name}: its pod did not start within {age:.0f} s: {why}"), False
    return None


def _newest_pod(view: JobView) -> dict[str, Any]:
    """The status of the Job's newest pod (``view.pods`` must not be empty)."""
    return max(view.pods.values(), key=lambda status: status.get("creationTimestamp") or "")


def _flow_container_status(view: JobView) -> dict[str, Any] | None:
    """The status of the container ``flow`` (else the first) of the Job's newest pod."""
    if not view.pods:
        return None
    statuses = _newest_pod(view).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER_NAME), statuses[0] if statuses else None)


def _flow_memory_limit(pod: Any) -> str | None:
    """The memory limit of the pod's flow container (``"96Mi"``), None without one."""
    containers = getattr(getattr(pod, "spec", None), "containers", None) or []
    for container in containers:
        if getattr(container, "name", None) == CONTAINER_NAME:
            limits = getattr(getattr(container, "resources", None), "limits", None) or {}
            return str(limits["memory"]) if limits.get("memory") else None
    return None


def _pending_reason(view: JobView) -> str | None:
    for pod in view.pods.values():
        for condition in pod.get("conditions") or []:
            if condition.get("status") == "False" and condition.get("message"):
                return f"{condition.get('reason') or condition.get('type')}: {condition['message']}"
    return None


def _terminated(view: JobView, terminated: dict[str, Any]) -> Ended:
    code = terminated.get("exitCode")
    reason = terminated.get("reason") or "Error"
    limit = _newest_pod(view).get(_MEMORY_LIMIT) if view.pods else None
    if reason == "OOMKilled":
        explained = "was OOM-killed (OOMKilled)"
    elif code == _SIGKILL_EXIT and limit:
        # The runtime can miss the cgroup's OOM event when the task exits first (a race in containerd and Docker
        # under load): the container then ends "Error" with 137, and its memory limit is the likely cause.
        explained = f"was killed (SIGKILL) with no reason given: out of memory (its limit is {limit}) unless evicted"
    else:
        explained = f"ended: {reason}"
    suffix = f"; the Job failed: {view.failed_reason}" if view.failed_reason else ""
    return Ended(code, f"Job {view.name}: container flow {explained} (exit code {code}){suffix}")
