"""The Kubernetes agent: each flow run is one batch/v1 Job (``kubernetes_spec.py`` says what goes in it).

Deploy: the run token's Secret first, then the Job, then the Secret is given the Job as its owner, so a pod never
starts before its token exists and deleting the Job (cancel, clean-up, by hand) deletes the token too. A 409 on
the Job (a retried deploy whose first answer was lost) counts as deployed when the Job there is this run's.

Watch (``kubernetes_watch.py``): two threads follow the agent's Jobs and pods through the watch API. From what they
see, :meth:`KubernetesDriver.inspect` ends a run:

- the Job Complete: exit 0; the flow container terminated non-zero (when Kubernetes will not retry it), or the Job
  Failed: the container's exit code and reason (``OOMKilled``), else the Job's (``DeadlineExceeded``);
- the flow container cannot start: an image that cannot be pulled (``ErrImageNeverPull``, ``ImagePullBackOff``,
  ``InvalidImageName``) or a broken container config: exit code unknown, Kubernetes' reason and message;
- no pod started within ``pending_timeout_seconds`` (unschedulable, a quota, an admission refusal...);
- the Job gone while the run was not over (deleted from outside): exit code unknown, said so.

A Job Kubernetes finished (Complete, Failed) is deleted unless ``disable_job_deletion``; one whose end the agent
decided (its pod may still start) is always deleted. Cancel and cold stop delete the Job's pods with the grace
period, then the Job, and wait (without holding a thread) for the watch to see it gone. A delete the API server
did not take is retried once it answers again.

While the API server does not answer, :meth:`KubernetesDriver.problem` says why (health 503, no claims); the
watch threads retry with backoff and the agent resumes by itself.

Usage::

    from baton.agent import KubernetesAgent

    KubernetesAgent(labels=["k8s"], namespace="flows", service_account_name="baton-flows").start()
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Unpack
from urllib.parse import urlsplit

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from baton.agent.base import Agent, AgentOptions, agent_settings, runtime_options
from baton.agent.driver import LOG_TAIL_LINES, Deployment, DriverEvents, Ended, Recovered, is_run_id, with_last_lines
from baton.agent.env import is_loopback_host
from baton.agent.kubernetes_spec import (
    ANNOTATION_AGENT_NAME,
    CONTAINER_NAME,
    LABEL_AGENT,
    LABEL_FLOW_RUN_ID,
    LABEL_TENANT_ID,
    JobTemplateError,
    KubernetesOptions,
    label_value,
    owner_reference,
    plan_job,
    retries_possible,
)
from baton.agent.kubernetes_watch import API_TIMEOUT_SECONDS, WATCH_SECONDS, JobWatch
from baton.exceptions import ConfigurationError, DeploymentError, PlatformUnavailableError
from baton.schemas.core import RunConfigType
from baton.schemas.responses import ClaimedRun

logger = logging.getLogger("baton.agent")

_RUN_CONFIG_TYPES = {RunConfigType.KUBERNETES, RunConfigType.UNIVERSAL}
_TRANSIENT = frozenset({429, 500, 502, 503, 504})


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
        clock: measures how long Jobs wait for a pod.
    """

    agent_type = "kubernetes"
    watch_interval_seconds = 1.0  # a backstop: the watch threads wake the agent at each change
    default_limit: int | None = None  # runs go to the cluster, whose scheduler queues what does not fit

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
        self._agent_name = ""
        self._events: DriverEvents | None = None
        self._health: dict[str, str | None] = {}  # per kind of API call: why it fails, or None
        self._health_lock = threading.Lock()
        self._leftovers: set[str] = set()  # Jobs to delete once the API server answers again
        self._found: list[Recovered] = []  # Jobs made before a restart, for recover()
        self._batch: Any = None
        self._core: Any = None
        self.watch: JobWatch | None = None
        # How long each watch request lasts before it resumes from its resourceVersion (tests shorten it).
        self.watch_seconds = WATCH_SECONDS

    # --- the platform ----------------------------------------------------------------------------

    def labels(self) -> list[str]:
        return []

    def check_api_url(self, api_url: str) -> str | None:
        host = urlsplit(api_url).hostname or ""
        if is_loopback_host(host):
            return (
                f"the API URL {api_url} is on loopback: flow-run pods reach it only with hostNetwork: true in their "
                "job template; give the agent an address pods can reach (--api)"
            )
        return None

    async def open(self, events: DriverEvents) -> None:
        self._events = events
        # The agent's name labels its Jobs (baton.io/agent): the watches follow those only.
        self._agent_name, self._agent_label = events.name, label_value(events.name)
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
        self.watch = JobWatch(
            self._batch,
            self._core,
            self.options.namespace,
            api_client.sanitize_for_serialization,
            on_change=events.deployments_changed,
            on_health=self._set_health,
            clock=self._clock,
            on_log=events.run_logs if events.sends_run_logs else None,  # no events watch under --no-cloud-logs
        )
        self.watch.watch_seconds = self.watch_seconds
        # Before the watches start: their first list then records what these Jobs are doing now
        self._found = await asyncio.to_thread(self._track_own_jobs)
        self.watch.start(self._agent_label)

    def _track_own_jobs(self) -> list[Recovered]:
        """The Jobs this agent's name made that are there now (before a restart), tracked; [] when they cannot be
        listed (the agent starts all the same: a cancel still finds them through kill_stored)."""
        assert self.watch is not None
        try:
            listed = _retrying(
                self._batch.list_namespaced_job,
                self.options.namespace,
                label_selector=f"{LABEL_AGENT}={self._agent_label}",
            )
        except (ApiException, PlatformUnavailableError) as exc:
            logger.warning("cannot list the Jobs of an earlier run of this agent: %s", exc)
            return []
        found: list[Recovered] = []
        for job in listed.items:
            metadata = job.metadata
            run_id = (metadata.labels or {}).get(LABEL_FLOW_RUN_ID)
            # The label is the name cut and cleaned: another agent's may share it; the annotation is the whole name
            mine = (metadata.annotations or {}).get(ANNOTATION_AGENT_NAME) == self._agent_name
            if not mine or not is_run_id(run_id) or metadata.deletion_timestamp is not None:
                continue
            pod = job.spec.template.spec
            retries = retries_possible(job.spec.backoff_limit, pod.restart_policy if pod else None)
            self.watch.track(metadata.name, str(run_id), retries, uid=str(metadata.uid))
            self.watch.created(metadata.name)
            deployment = self._deployment_of(metadata.name, str(metadata.uid))
            found.append(Recovered(str(run_id), deployment, (metadata.labels or {}).get(LABEL_TENANT_ID)))
        return found

    async def recover(self) -> list[Recovered]:
        found, self._found = self._found, []
        return found

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
        if self.watch is not None:
            await asyncio.to_thread(self.watch.stop, 2.0)
        if self._api_client is not None:
            await asyncio.to_thread(self._api_client.close)

    def problem(self) -> str | None:
        with self._health_lock:
            return next((problem for problem in self._health.values() if problem is not None), None)

    def _set_health(self, kind: str, problem: str | None) -> None:
        """One kind of call (``jobs``, ``pods``, ``deploy``, ``delete``) works again (None) or fails (why)."""
        with self._health_lock:
            before = next((p for p in self._health.values() if p is not None), None)
            if self._health.get(kind) == problem:
                return
            self._health[kind] = problem
            after = next((p for p in self._health.values() if p is not None), None)
        if after is not None and before is None:
            logger.error("the Kubernetes API server fails (%s): %s; claiming no runs until it is back", kind, after)
        elif after is None and before is not None:
            logger.warning("the Kubernetes API server answers again: claiming runs")
            if self._events is not None:
                self._events.platform_back()
        if problem is None and kind in ("jobs", "pods") and self._leftovers:
            threading.Thread(target=self._delete_leftovers, name="baton-k8s-leftovers", daemon=True).start()

    # --- deploy ----------------------------------------------------------------------------------

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        run_config = claimed.flow_run.run_config
        if run_config.type not in _RUN_CONFIG_TYPES:
            raise DeploymentError(
                f"the Kubernetes agent runs only kubernetes and universal run configs; this run's is "
                f"{run_config.type.value}"
            )
        try:
            plan = plan_job(claimed, env, self.options, agent_name=self._agent_name)
        except JobTemplateError as exc:
            raise DeploymentError(str(exc)) from exc
        assert self.watch is not None, "deploy before open"
        spec = plan.job["spec"]
        retries = retries_possible(spec.get("backoffLimit"), spec["template"]["spec"].get("restartPolicy"))
        self.watch.track(plan.name, claimed.flow_run.id, retries_possible=retries)
        try:
            uid = await asyncio.to_thread(self._create, plan.name, plan.job, plan.secret, claimed.flow_run.id)
        except PlatformUnavailableError as exc:
            self.watch.forget(plan.name)
            self._set_health("deploy", str(exc))  # the run goes back to the queue (lifecycle.py), not Failed
            raise
        except BaseException:
            self.watch.forget(plan.name)
            raise
        self._set_health("deploy", None)
        self.watch.created(plan.name, uid)
        return self._deployment_of(plan.name, uid)

    def _deployment_of(self, name: str, uid: str) -> Deployment:
        """What deploy returns for Job ``name``, and what recover finds of it again: the same data, which adoption
        compares with what Submitted stored."""
        data = {"job_name": name, "namespace": self.options.namespace, "job_uid": uid}
        return Deployment(message=f"Job: {name}", data=data, handle=name)

    def _create(self, name: str, job: dict[str, Any], secret: dict[str, Any], run_id: str) -> str:
        namespace = self.options.namespace
        try:
            _retrying(self._core.create_namespaced_secret, namespace, secret)
        except ApiException as exc:
            # The name is this claim's own (kubernetes_spec.job_name): a 409 is an earlier attempt of this deploy
            if exc.status != 409:
                raise DeploymentError(f"cannot create the Secret of Job {name}: {_reason(exc)}") from exc
            _retrying(self._core.patch_namespaced_secret, name, namespace, {"stringData": secret["stringData"]})
        try:
            created = _retrying(self._batch.create_namespaced_job, namespace, job)
        except ApiException as exc:
            if exc.status != 409:
                self._delete_secret_quietly(name)
                raise DeploymentError(f"cannot create Job {name}: {_reason(exc)}") from exc
            created = _retrying(self._batch.read_namespaced_job, name, namespace)
            if (created.metadata.labels or {}).get(LABEL_FLOW_RUN_ID) != run_id:
                raise DeploymentError(f"a Job named {name} exists already and is not this run's") from exc
        except PlatformUnavailableError:
            self._delete_secret_quietly(name)  # may fail too: then the token outlives its claim, revoked
            raise
        uid = str(created.metadata.uid)
        patch = {"metadata": {"ownerReferences": [owner_reference(name, uid)]}}
        try:
            _retrying(self._core.patch_namespaced_secret, name, namespace, patch)
        except (ApiException, PlatformUnavailableError) as exc:  # the run goes on; only its token's clean-up suffers
            logger.warning("Job %s: could not make it own its Secret (%s): delete the Secret by hand", name, exc)
        return uid

    # --- inspect ---------------------------------------------------------------------------------

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        name: str = deployment.handle
        assert self.watch is not None
        found = self.watch.ended(name, self.options.pending_timeout_seconds)
        if found is None:
            return None
        ended, finished_by_kubernetes = found
        if ended.exit_code != 0:
            ended = await asyncio.to_thread(self._with_last_lines, name, ended)
        # A Job whose end the agent decided (its pod may still start and run the flow) goes whatever the option
        if not finished_by_kubernetes or not self.options.disable_job_deletion:
            await asyncio.to_thread(self._delete_job, name, None)
        self.watch.forget(name)
        return ended

    def _with_last_lines(self, name: str, ended: Ended) -> Ended:
        """``ended`` with the last lines its flow container wrote (what a crash before the engine's own logging
        said, e.g. an import error), when its pod is still there to ask."""
        assert self.watch is not None
        pod = self.watch.newest_pod(name)
        if pod is None:
            return ended
        try:
            text = self._core.read_namespaced_pod_log(
                pod,
                self.options.namespace,
                container=CONTAINER_NAME,
                tail_lines=LOG_TAIL_LINES,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # no container started, no pods/log right, the API away: the message says less
            logger.debug("Job %s: cannot read the logs of pod %s: %s", name, pod, exc)
            return ended
        return Ended(ended.exit_code, with_last_lines(ended.message or f"Job {name} failed", str(text or "")))

    # --- kill ------------------------------------------------------------------------------------

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        name: str = deployment.handle
        await self._kill(name, grace_seconds)

    async def _kill(self, name: str, grace_seconds: float) -> None:
        assert self.watch is not None
        found = self.watch.ended(name, math.inf)
        if found is not None and found[1] and self.options.disable_job_deletion:
            self.watch.forget(name)  # Kubernetes finished it: nothing runs, and it is kept as asked
            return
        deleted = await asyncio.to_thread(self._delete_job, name, grace_seconds)
        # Wait for the watch to see it go, without holding a thread (a cold stop kills many runs at once)
        deadline = time.monotonic() + grace_seconds + 30
        while deleted and not self.watch.gone(name) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if deleted and not self.watch.gone(name):
            logger.warning("Job %s is still there %.0f s after its deletion", name, grace_seconds + 30)
        self.watch.forget(name)

    def _delete_job(self, name: str, grace_seconds: float | None) -> bool:
        """Delete the Job (its pods first, with ``grace_seconds``, when given); False when it was not there.

        A delete the API server does not take now is kept and made when it answers again.
        """
        namespace = self.options.namespace
        try:
            if grace_seconds is not None:
                # A Job's deletion gives its pods their own default grace: the pods first, with ours (at least 1 s:
                # 0 would be a force deletion).
                self._core.delete_collection_namespaced_pod(
                    namespace,
                    label_selector=f"job-name={name}",
                    grace_period_seconds=max(1, math.ceil(grace_seconds)),
                    _request_timeout=API_TIMEOUT_SECONDS,
                )
            body = k8s.V1DeleteOptions(propagation_policy="Foreground" if grace_seconds is not None else "Background")
            self._batch.delete_namespaced_job(name, namespace, body=body, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status == 404:
                return False
            logger.warning("could not delete Job %s: %s", name, _reason(exc))
            if exc.status in _TRANSIENT:
                self._leftovers.add(name)
            return False
        except (HTTPError, OSError) as exc:
            logger.warning("could not delete Job %s (%s): deleting it once the API server answers", name, exc)
            self._leftovers.add(name)
            self._set_health("delete", f"cannot delete Jobs: {exc}")
            return False
        self._set_health("delete", None)
        return True

    def _delete_leftovers(self) -> None:
        for name in list(self._leftovers):
            self._leftovers.discard(name)
            self._delete_job(name, None)

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        """A Job this agent created before it restarted: there still, in this namespace, labelled with this run."""
        name = data.get("job_name")
        if not isinstance(name, str) or data.get("namespace") != self.options.namespace:
            return None
        try:
            job = await asyncio.to_thread(
                self._batch.read_namespaced_job, name, self.options.namespace, _request_timeout=API_TIMEOUT_SECONDS
            )
        except (ApiException, HTTPError) as exc:
            logger.info("run %s: its Job %s cannot be read (%s): nothing stopped", run_id, name, exc)
            return None
        labels = job.metadata.labels or {}
        if labels.get(LABEL_FLOW_RUN_ID) != run_id or data.get("job_uid") not in (None, job.metadata.uid):
            return None
        assert self.watch is not None
        self.watch.track(name, run_id, retries_possible=False, uid=str(job.metadata.uid))
        self.watch.created(name)
        await self._kill(name, grace_seconds)
        return f"its Job {name}"

    def detach(self, deployment: Deployment) -> None:
        return None  # the Job runs on in the cluster; a restarted agent adopts it (recover)

    def forget(self, deployment: Deployment) -> None:
        assert self.watch is not None
        self.watch.forget(deployment.handle)

    def _delete_secret_quietly(self, name: str) -> None:
        try:
            self._core.delete_namespaced_secret(name, self.options.namespace, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("could not delete Secret %s: %s", name, _reason(exc))
        except HTTPError as exc:
            logger.warning("could not delete Secret %s: %s", name, exc)


def _retrying(call: Callable[..., Any], *args: Any, attempts: int = 4, **kwargs: Any) -> Any:
    """``call(*args)``, retried on what passes (429, 5xx, a connection that failed) with a growing pause.

    Raises:
        ApiException: a refusal, or a transient error that lasted through every attempt.
        PlatformUnavailableError: the API server could not be reached at all.
    """
    pause = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return call(*args, _request_timeout=API_TIMEOUT_SECONDS, **kwargs)
        except ApiException as exc:
            if exc.status not in _TRANSIENT or attempt == attempts:
                raise
        except HTTPError as exc:
            if attempt == attempts:
                raise PlatformUnavailableError(f"cannot reach the Kubernetes API server: {exc}") from exc
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")


def _reason(exc: ApiException) -> str:
    return f"{exc.status} {exc.reason}: {(exc.body or '')[:500]}".strip()
