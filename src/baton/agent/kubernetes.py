"""The Kubernetes agent: each flow run is one batch/v1 Job (``kubernetes_spec.py`` says what goes in it).

Deploy: the run token's Secret first, then the Job, then the Secret is given the Job as its owner, so a pod never
starts before its token exists and deleting the Job (cancel, clean-up, by hand) deletes the token too. A 409 on
the Job (a retried deploy whose first answer was lost) counts as deployed when the Job there is this run's.

Watch: one thread per kind (Jobs, pods) lists the agent's own objects (label ``baton.io/agent``) and then follows
the watch API from that list's resourceVersion; a watch that times out resumes where it was, one that expired
(410 Gone) lists again. Nothing lists every Job on every tick. From what it sees, :meth:`KubernetesDriver.inspect`
ends a run:

- the Job Complete: exit 0; the Job Failed: the flow container's exit code and reason (``OOMKilled``), else the
  Job's reason (``DeadlineExceeded``, ``BackoffLimitExceeded``);
- the flow container cannot start: an image that cannot be pulled (``ErrImageNeverPull``, ``ImagePullBackOff``,
  ``InvalidImageName``) or a broken container config: exit code unknown, Kubernetes' reason and message;
- the pod unschedulable for longer than ``pending_timeout_seconds``: Kubernetes' message;
- the Job gone while the run was not over (deleted from outside): exit code unknown, said so.

Finished Jobs are deleted (background propagation) unless ``disable_job_deletion``. Cancel and cold stop delete
the Job with foreground propagation and wait (up to the grace period and some) for it to be gone.

While the API server does not answer, :meth:`KubernetesDriver.problem` says why (health 503, no claims); the
watch threads retry with backoff and the agent resumes by itself.

Usage::

    from baton.agent import KubernetesAgent

    KubernetesAgent(labels=["k8s"], namespace="flows", service_account_name="baton-flows").start()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from baton.agent.base import Agent, AgentOptions, agent_settings, runtime_options
from baton.agent.driver import Deployment, DriverEvents, Ended
from baton.agent.kubernetes_spec import (
    LABEL_AGENT,
    LABEL_FLOW_RUN_ID,
    JobTemplateError,
    KubernetesOptions,
    label_value,
    owner_reference,
    plan_job,
)
from baton.exceptions import ConfigurationError, DeploymentError, PlatformUnavailableError
from baton.schemas.core import RunConfigType
from baton.schemas.responses import ClaimedRun

logger = logging.getLogger("baton.agent")

_RUN_CONFIG_TYPES = {RunConfigType.KUBERNETES, RunConfigType.UNIVERSAL}
# Waiting reasons of the flow container that no wait will cure.
_CANNOT_START = frozenset(
    {
        "ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
        "CreateContainerError", "RunContainerError",
    }
)  # fmt: skip
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
# Watches end server-side after this long and resume from their resourceVersion (below the API server's limits).
WATCH_SECONDS = 60
API_TIMEOUT_SECONDS = 30


@dataclass
class _JobView:
    """What the watches know of one of the agent's Jobs."""

    name: str
    run_id: str
    complete: bool = False
    failed_reason: str | None = None
    gone: bool = False
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod name -> its status (a dict)
    unschedulable_since: float | None = None


class KubernetesAgent(Agent):
    """An :class:`~baton.agent.base.Agent` with a :class:`KubernetesDriver`: each flow run is a Job.

    Takes the common agent options and those of :class:`~baton.agent.kubernetes_spec.KubernetesOptions`
    (``namespace``, ``job_template``, ``service_account_name``, ``image_pull_secrets``, ``disable_job_deletion``,
    ...); ``kubeconfig`` and ``context`` choose the cluster (default: in-cluster when run in a pod, else
    ``$KUBECONFIG`` / ``~/.kube/config``).

    Raises:
        ConfigurationError: no cluster configuration, an invalid option.
    """

    driver: KubernetesDriver

    def __init__(
        self,
        *,
        namespace: str | None = None,
        job_template: dict[str, Any] | None = None,
        job_template_path: str | None = None,
        service_account_name: str | None = None,
        image_pull_secrets: list[str] | None = None,
        disable_job_deletion: bool | None = None,
        default_image: str | None = None,
        allow_pod_option: list[str] | None = None,
        pending_timeout_seconds: int | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_client: Any = None,
        **options: Unpack[AgentOptions],
    ) -> None:
        settings = agent_settings(**options)
        if job_template_path is not None:
            if job_template is not None:
                raise ConfigurationError("give job_template or job_template_path (--job-template), not both")
            job_template = load_job_template(job_template_path)
        given = {
            "namespace": namespace,
            "job_template": job_template,
            "service_account_name": service_account_name,
            "image_pull_secrets": image_pull_secrets,
            "disable_job_deletion": disable_job_deletion,
            "default_image": default_image,
            "allow_pod_option": allow_pod_option,
            "pending_timeout_seconds": pending_timeout_seconds,
        }
        try:
            kubernetes_options = KubernetesOptions(**{key: value for key, value in given.items() if value is not None})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"invalid Kubernetes agent option: {problems}") from exc
        driver = KubernetesDriver(kubernetes_options, kubeconfig=kubeconfig, context=context, api_client=api_client)
        super().__init__(driver, settings=settings, **runtime_options(options))


def load_job_template(path: str) -> dict[str, Any]:
    """A Job template from a YAML or JSON file (``--job-template PATH``).

    Raises:
        ConfigurationError: the file cannot be read, is not YAML, or is not one mapping.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            template = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigurationError(f"--job-template {path}: cannot read it: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"--job-template {path}: not valid YAML: {exc}") from exc
    if not isinstance(template, dict):
        raise ConfigurationError(f"--job-template {path}: must hold one Job (a mapping), not {type(template).__name__}")
    return template


class KubernetesDriver:
    """Deploys flow runs as Kubernetes Jobs (see the module docstring).

    Args:
        options: the agent's Kubernetes options.
        kubeconfig: a kubeconfig file (default: in-cluster, else ``$KUBECONFIG`` / ``~/.kube/config``).
        context: the kubeconfig context (default: its current one).
        api_client: a ready ``kubernetes.client.ApiClient`` (tests, embedding): no configuration is loaded.
        clock: measures how long pods stay unschedulable.
    """

    agent_type = "kubernetes"
    watch_interval_seconds = 1.0  # a backstop: the watch threads wake the agent at each change

    def __init__(
        self,
        options: KubernetesOptions | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options or KubernetesOptions()
        self._kubeconfig = kubeconfig
        self._context = context
        self._api_client = api_client
        self._clock = clock
        self._agent_label = ""
        self._events: DriverEvents | None = None
        self._jobs: dict[str, _JobView] = {}  # job name -> view
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._batch: Any = None
        self._core: Any = None
        # How long each watch request lasts before it is resumed from its resourceVersion (tests shorten it).
        self.watch_seconds = WATCH_SECONDS

    # --- the platform ----------------------------------------------------------------------------

    def labels(self) -> list[str]:
        return []

    def check_api_url(self, api_url: str) -> str | None:
        host = api_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
            return (
                f"the API URL {api_url} is on loopback: flow-run pods reach it only with hostNetwork: true in their "
                "job template; give the agent an address pods can reach (--api)"
            )
        return None

    async def open(self, events: DriverEvents) -> None:
        self._events = events
        # The agent's name labels its Jobs (baton.io/agent): the watches follow those only, and an agent restarted
        # under the same name finds its Jobs again.
        self._agent_label = label_value(events.name)
        api_client = await asyncio.to_thread(self._connect)
        self._batch, self._core = k8s.BatchV1Api(api_client), k8s.CoreV1Api(api_client)
        try:  # the namespace is usable with these credentials: fail at start, not at the first run
            await asyncio.to_thread(
                self._batch.list_namespaced_job, self.options.namespace, limit=1, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            raise ConfigurationError(
                f"cannot list Jobs in namespace {self.options.namespace}: {exc.status} {exc.reason}"
            ) from exc
        except HTTPError as exc:
            raise ConfigurationError(f"cannot reach the Kubernetes API server: {exc}") from exc
        for kind in ("jobs", "pods"):
            thread = threading.Thread(target=self._follow, args=(kind,), name=f"baton-k8s-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _connect(self) -> Any:
        if self._api_client is not None:
            return self._api_client
        try:
            if self._kubeconfig is None and self._context is None:
                try:
                    k8s_config.load_incluster_config()
                except ConfigException:
                    k8s_config.load_kube_config()
            else:
                k8s_config.load_kube_config(config_file=self._kubeconfig, context=self._context)
        except (ConfigException, OSError) as exc:
            raise ConfigurationError(f"no Kubernetes configuration: {exc}") from exc
        self._api_client = k8s.ApiClient()
        return self._api_client

    async def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 2.0)
        if self._api_client is not None:
            await asyncio.to_thread(self._api_client.close)

    def problem(self) -> str | None:
        return self._problem

    # --- deploy ----------------------------------------------------------------------------------

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        run_config = claimed.flow_run.run_config
        if run_config.type not in _RUN_CONFIG_TYPES:
            raise DeploymentError(
                f"the Kubernetes agent runs only kubernetes and universal run configs; this run's is "
                f"{run_config.type.value}"
            )
        try:
            plan = plan_job(claimed, env, self.options, agent_name=self._agent_label)
        except JobTemplateError as exc:
            raise DeploymentError(str(exc)) from exc
        with self._lock:
            self._jobs[plan.name] = _JobView(plan.name, claimed.flow_run.id)
        try:
            uid = await asyncio.to_thread(self._create, plan.name, plan.job, plan.secret, claimed.flow_run.id)
        except BaseException:
            with self._lock:
                self._jobs.pop(plan.name, None)
            raise
        data = {"job_name": plan.name, "namespace": self.options.namespace, "job_uid": uid}
        return Deployment(message=f"Job: {plan.name}", data=data, handle=plan.name)

    def _create(self, name: str, job: dict[str, Any], secret: dict[str, Any], run_id: str) -> str:
        namespace = self.options.namespace
        try:
            _retrying(self._core.create_namespaced_secret, namespace, secret)
        except ApiException as exc:
            if exc.status != 409:  # 409: a retried deploy made it already; its token is the old claim's
                raise DeploymentError(f"cannot create the Secret of Job {name}: {_reason(exc)}") from exc
            _retrying(self._core.patch_namespaced_secret, name, namespace, {"stringData": secret["stringData"]})
        try:
            created = _retrying(self._batch.create_namespaced_job, namespace, job)
        except ApiException as exc:
            if exc.status != 409:
                self._delete_quietly("secret", name)
                raise DeploymentError(f"cannot create Job {name}: {_reason(exc)}") from exc
            # A Job of that name: this run's, made by an attempt whose answer was lost, counts as deployed
            created = _retrying(self._batch.read_namespaced_job, name, namespace)
            if (created.metadata.labels or {}).get(LABEL_FLOW_RUN_ID) != run_id:
                raise DeploymentError(f"a Job named {name} exists already and is not this run's") from exc
        uid = str(created.metadata.uid)
        patch = {"metadata": {"ownerReferences": [owner_reference(name, uid)]}}
        try:
            _retrying(self._core.patch_namespaced_secret, name, namespace, patch)
        except ApiException as exc:  # the run goes on; only the clean-up of its token depends on this
            logger.warning("Job %s: could not make it own its Secret (%s): delete it by hand", name, _reason(exc))
        return uid

    # --- inspect ---------------------------------------------------------------------------------

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        name: str = deployment.handle
        with self._lock:
            view = self._jobs.get(name)
            ended = None if view is None else self._ended(view)
        if ended is not None and not self.options.disable_job_deletion:
            await asyncio.to_thread(self._delete_quietly, "job", name)
        if ended is not None:
            with self._lock:
                self._jobs.pop(name, None)
        return ended

    def _ended(self, view: _JobView) -> Ended | None:
        """How the Job's run ended, from what the watches saw; None while it runs (call under the lock)."""
        if view.complete:
            return Ended(0)
        flow = _flow_container_status(view)
        state = flow.get("state", {}) if flow is not None else {}
        if state.get("terminated"):
            return _terminated(view, state["terminated"])
        if view.failed_reason is not None:
            return Ended(None, f"Job {view.name} failed: {view.failed_reason}")
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _CANNOT_START:
            message = f"{waiting['reason']} {waiting.get('message') or ''}".strip()
            return Ended(None, f"Job {view.name}: the flow container cannot start: {message}")
        if view.gone:
            return Ended(None, f"Job {view.name} was deleted before its run ended")
        return self._unschedulable_too_long(view)

    def _unschedulable_too_long(self, view: _JobView) -> Ended | None:
        if view.unschedulable_since is None:
            return None
        pending = self._clock() - view.unschedulable_since
        if pending < self.options.pending_timeout_seconds:
            return None
        message = _unschedulable_message(view) or "Unschedulable"
        return Ended(None, f"Job {view.name}: its pod could not be scheduled for {pending:.0f} s: {message}")

    # --- kill ------------------------------------------------------------------------------------

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        name: str = deployment.handle
        await asyncio.to_thread(self._delete_job_and_wait, name, grace_seconds)
        with self._lock:
            self._jobs.pop(name, None)

    def _delete_job_and_wait(self, name: str, grace_seconds: float) -> None:
        namespace = self.options.namespace
        body = k8s.V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=max(0, int(grace_seconds)))
        try:
            # The pods first, with the grace period (a Job's deletion gives its pods their own default grace).
            self._core.delete_collection_namespaced_pod(
                namespace,
                label_selector=f"job-name={name}",
                grace_period_seconds=max(0, int(grace_seconds)),
                _request_timeout=API_TIMEOUT_SECONDS,
            )
            self._batch.delete_namespaced_job(name, namespace, body=body, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("could not delete Job %s: %s", name, _reason(exc))
            return
        deadline = time.monotonic() + grace_seconds + 30
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                self._batch.read_namespaced_job(name, namespace, _request_timeout=API_TIMEOUT_SECONDS)
            except ApiException as exc:
                if exc.status == 404:
                    return
            time.sleep(0.2)
        logger.warning("Job %s is still there %.0f s after its deletion", name, grace_seconds + 30)

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        """A Job this agent created before it restarted: there still, in this namespace, labelled with this run."""
        name = data.get("job_name")
        if not isinstance(name, str) or data.get("namespace") != self.options.namespace:
            return None
        try:
            job = await asyncio.to_thread(
                self._batch.read_namespaced_job, name, self.options.namespace, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException:
            return None
        if (job.metadata.labels or {}).get(LABEL_FLOW_RUN_ID) != run_id:
            return None
        await asyncio.to_thread(self._delete_job_and_wait, name, grace_seconds)
        return f"its Job {name}"

    def detach(self, deployment: Deployment) -> None:
        return None  # the Job runs on in the cluster; finished Jobs are cleaned up by the next agent or by hand

    def _delete_quietly(self, kind: str, name: str) -> None:
        namespace = self.options.namespace
        try:
            if kind == "job":
                body = k8s.V1DeleteOptions(propagation_policy="Background")
                self._batch.delete_namespaced_job(name, namespace, body=body, _request_timeout=API_TIMEOUT_SECONDS)
            else:
                self._core.delete_namespaced_secret(name, namespace, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("could not delete %s %s: %s", kind, name, _reason(exc))
        except HTTPError as exc:
            logger.warning("could not delete %s %s: %s", kind, name, exc)

    # --- the watches -----------------------------------------------------------------------------

    def _follow(self, kind: str) -> None:
        """List the agent's objects of ``kind``, then follow their changes; resume after time-outs, list again after
        an expiry (410), retry with backoff while the API server does not answer."""
        selector = f"{LABEL_AGENT}={self._agent_label}"
        list_call = self._batch.list_namespaced_job if kind == "jobs" else self._core.list_namespaced_pod
        pause = 0.5
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = list_call(
                        self.options.namespace, label_selector=selector, _request_timeout=API_TIMEOUT_SECONDS
                    )
                    self._seen_list(kind, listed.items)
                    version = listed.metadata.resource_version
                version = self._watch(kind, list_call, selector, version)
                self._answered()
                pause = 0.5
            except ApiException as exc:
                if exc.status == 410:  # the resourceVersion expired: list again
                    version = None
                    continue
                if self._stop.is_set():
                    return
                self._lost(f"{exc.status} {exc.reason}")
                self._stop.wait(pause)
                pause = min(pause * 2, 10.0)
            except (HTTPError, OSError) as exc:
                if self._stop.is_set():  # close() shut the connections under the watch
                    return
                self._lost(str(exc))
                version = None
                self._stop.wait(pause)
                pause = min(pause * 2, 10.0)

    def _watch(self, kind: str, list_call: Any, selector: str, version: str) -> str | None:
        watcher = k8s_watch.Watch()
        stream = watcher.stream(
            list_call,
            self.options.namespace,
            label_selector=selector,
            resource_version=version,
            timeout_seconds=self.watch_seconds,
            allow_watch_bookmarks=True,
            _request_timeout=self.watch_seconds + 10,
        )
        try:
            for event in stream:
                self._answered()
                if self._stop.is_set():
                    break
                kind_of_event, obj = event["type"], event["object"]
                if kind_of_event == "ERROR":
                    status = getattr(obj, "code", None) or (obj.get("code") if isinstance(obj, dict) else None)
                    if status == 410:
                        return None
                    continue
                if kind_of_event != "BOOKMARK":
                    self._seen(kind, obj, deleted=kind_of_event == "DELETED")
                version = obj.metadata.resource_version or version
        finally:
            watcher.stop()
        return watcher.resource_version or version

    def _seen_list(self, kind: str, items: list[Any]) -> None:
        present = {item.metadata.name for item in items}
        for item in items:
            self._seen(kind, item, deleted=False)
        if kind == "jobs":  # a Job deleted while no watch ran
            with self._lock:
                for view in self._jobs.values():
                    if view.name not in present and view.pods:
                        view.gone = True
        self._changed()

    def _seen(self, kind: str, obj: Any, deleted: bool) -> None:
        with self._lock:
            if kind == "jobs":
                self._seen_job(obj, deleted)
            else:
                self._seen_pod(obj, deleted)
        self._changed()

    def _seen_job(self, job: Any, deleted: bool) -> None:
        view = self._jobs.get(job.metadata.name)
        if view is None:
            return
        view.gone = view.gone or deleted
        for condition in (job.status.conditions or []) if job.status else []:
            if condition.status != "True":
                continue
            if condition.type == "Complete":
                view.complete = True
            elif condition.type == "Failed":
                reason = condition.reason or "Failed"
                view.failed_reason = f"{reason}: {condition.message}" if condition.message else reason

    def _seen_pod(self, pod: Any, deleted: bool) -> None:
        job_name = (pod.metadata.labels or {}).get("job-name")
        view = self._jobs.get(job_name) if job_name else None
        if view is None:
            return
        status: dict[str, Any] = self._api_client.sanitize_for_serialization(pod.status) if pod.status else {}
        if deleted:
            view.pods.pop(pod.metadata.name, None)
            return
        view.pods[pod.metadata.name] = status
        unschedulable = any(
            cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable"
            for cond in status.get("conditions") or []
        )
        if not unschedulable:
            view.unschedulable_since = None
        elif view.unschedulable_since is None:
            view.unschedulable_since = self._clock()

    def _changed(self) -> None:
        if self._events is not None:
            self._events.deployments_changed()

    def _answered(self) -> None:
        if self._problem is not None:
            logger.warning("the Kubernetes API server answers again: claiming runs")
            self._problem = None
            if self._events is not None:
                self._events.platform_back()

    def _lost(self, reason: str) -> None:
        problem = f"the Kubernetes API server does not answer: {reason}"
        if self._problem is None:
            logger.error("%s; claiming no runs until it is back", problem)
        self._problem = problem


def _retrying(call: Callable[..., Any], *args: Any, attempts: int = 4) -> Any:
    """``call(*args)``, retried on what passes (429, 5xx, a connection that failed) with a growing pause.

    Raises:
        ApiException: a refusal, or a transient error that lasted through every attempt.
        PlatformUnavailableError: the API server could not be reached at all.
    """
    pause = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return call(*args, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status not in _TRANSIENT or attempt == attempts:
                raise
        except HTTPError as exc:
            if attempt == attempts:
                raise PlatformUnavailableError(f"cannot reach the Kubernetes API server: {exc}") from exc
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")


def _flow_container_status(view: _JobView) -> dict[str, Any] | None:
    """The status of the container ``flow`` (else the first) of the Job's newest pod."""
    if not view.pods:
        return None
    pod = list(view.pods.values())[-1]
    statuses = pod.get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == "flow"), statuses[0] if statuses else None)


def _unschedulable_message(view: _JobView) -> str | None:
    for pod in view.pods.values():
        for condition in pod.get("conditions") or []:
            if condition.get("reason") == "Unschedulable":
                return str(condition.get("message") or "")
    return None


def _terminated(view: _JobView, terminated: dict[str, Any]) -> Ended | None:
    code = terminated.get("exitCode")
    if view.failed_reason is None and code == 0:
        return None  # the Job will say Complete
    reason = terminated.get("reason") or "Error"
    return Ended(code, f"Job {view.name}: container flow {_explained(reason)} (exit code {code})")


def _explained(reason: str) -> str:
    return "was OOM-killed (OOMKilled)" if reason == "OOMKilled" else f"ended: {reason}"


def _reason(exc: ApiException) -> str:
    return f"{exc.status} {exc.reason}: {(exc.body or '')[:500]}".strip()
