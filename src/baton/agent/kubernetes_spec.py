"""What the Kubernetes agent creates for a flow run: a batch/v1 Job and the Secret holding its run token (issue 11).

Pure functions of the claimed run and the agent's options; the driver that creates them on a cluster, watches and
deletes them comes with the agent. Usage::

    options = KubernetesOptions(namespace="flows", service_account_name="baton-flows")
    plan = plan_job(claimed, env, options, agent_name="k8s-1")
    # create plan.job, then plan.secret owned by it (owner_reference(job's uid))

The Job comes from the run config's ``job_template``, else the agent's, else :func:`default_job_template`. Into it
go: the name ``baton-<run>-<id>``, the agent's namespace, labels ``baton.io/flow-run-id``, ``baton.io/flow-id``
and ``baton.io/agent`` on the Job and its pod, and in the container ``flow`` (else the first): the image, the
engine's command, the run's environment with the run token from the Secret (never a plain value in the Job), and
the run config's resources and pull policy. Service account and pull secrets: run config, else template, else
agent. A run config's template is someone's input: :func:`template_problems` refuses what would give its pod
more of the node than a baseline pod (Kubernetes' "baseline" Pod Security Standard), and any Secret of the
namespace (a pod may mount every one: the agent's key, other runs' tokens), unless the operator allows it.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from baton.schemas.core import RunConfig, StorageType
from baton.schemas.responses import ClaimedRun

LABEL_FLOW_RUN_ID = "baton.io/flow-run-id"
LABEL_FLOW_ID = "baton.io/flow-id"
LABEL_AGENT = "baton.io/agent"
ANNOTATION_AGENT_NAME = "baton.io/agent-name"
LABEL_TENANT_ID = "baton.io/tenant-id"  # with LABEL_AGENT: whose Jobs a restarted agent may adopt
CONTAINER_NAME = "flow"
TOKEN_ENV = "BATON__API__KEY"  # noqa: S105 - the variable's name, not a secret
TOKEN_KEY = "token"  # noqa: S105 - the key in the Secret
ENGINE_COMMAND = ["python", "-m", "baton.engine"]
DEFAULT_TTL_SECONDS = 600

# Kubernetes names: a DNS-1123 label (Job names end up in pod names, with a 5-character suffix, within 63).
_UNSAFE = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
# The capabilities a baseline pod may add (Pod Security Standards, baseline profile).
_BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
        "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
    }
)  # fmt: skip
# What the operator may allow a run config's template (--allow-pod-option NAME), each a baseline rule.
POD_RULES = (
    "hostNetwork", "hostPID", "hostIPC", "hostPath", "hostPort", "privileged", "capabilities", "procMount",
    "seccompProfile", "seLinuxOptions", "sysctls", "hostProcess", "secrets", "serviceAccount",
)  # fmt: skip


class KubernetesOptions(BaseModel):
    """The Kubernetes agent's own options (``baton agent kubernetes start``): the CLI flags, the constructor's
    arguments and the installer's are derived from these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the Jobs (a DNS-1123 label).",
    )
    job_template: dict[str, Any] | None = Field(
        default=None, description="The Job template for runs whose run config has none (from --job-template PATH)."
    )
    service_account_name: str | None = Field(default=None, description="Service account of the Jobs' pods.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Image pull secrets of the pods.")
    disable_job_deletion: bool = Field(default=False, description="Keep finished Jobs (they are deleted otherwise).")
    default_image: str | None = Field(default=None, description="The image of runs that name none.")
    job_ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=0, description="ttlSecondsAfterFinished of Jobs.")
    allow_pod_option: list[str] = Field(
        default_factory=list, description="What a run config's job_template may ask beyond a baseline pod."
    )
    pending_timeout_seconds: int = Field(
        default=300, ge=1, description="Fail a run whose pod stays unschedulable this long."
    )


@dataclass(frozen=True)
class JobPlan:
    """A run's Job and its token's Secret (to be created after the Job, owned by it)."""

    name: str
    job: dict[str, Any]
    secret: dict[str, Any]


class JobTemplateError(ValueError):
    """A job template the agent cannot use; the message says which part and why."""


def job_name(claimed: ClaimedRun) -> str:
    """``baton-<run name>-<8 hex of the run id>-<6 hex of the claim>``, a DNS-1123 label of at most 50 characters.

    One name per claim, not per run: a flow-level retry or a claim after an expired lease is a new Job, never the
    old attempt's; a retried deploy of the same claim finds its own Job again (same name, same run).
    """
    run = claimed.flow_run
    slug = _UNSAFE.sub("-", run.name.lower()).strip("-")[:28].strip("-") or "run"
    claim = hashlib.sha256(claimed.run_token.encode()).hexdigest()[:6]
    return f"baton-{slug}-{run.id.replace('-', '')[:8]}-{claim}"


def label_value(value: str) -> str:
    """``value`` as a Kubernetes label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both ends)."""
    return _LABEL_VALUE_UNSAFE.sub("-", value)[:63].strip("-_.")


def default_job_template() -> dict[str, Any]:
    """A Job of one container ``flow``, never restarted nor retried (Baton's own retries decide)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {},
                "spec": {"restartPolicy": "Never", "containers": [{"name": CONTAINER_NAME}]},
            },
        },
    }


def template_problems(template: dict[str, Any], allowed: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What in a run config's ``template`` goes beyond a baseline pod, each naming the option that allows it."""
    problems: list[str] = []

    def refuse(rule: str, what: str) -> None:
        if rule not in allowed:
            problems.append(f"{what} (allow with --allow-pod-option {rule})")

    pod = _pod_spec(template)
    _check_service_account(pod, refuse)
    for rule in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(rule):
            refuse(rule, f"spec.template.spec.{rule}")
    for volume in _dicts(pod.get("volumes")):
        if "hostPath" in volume:
            refuse("hostPath", f"volume {volume.get('name')!r} is a hostPath")
        # Any pod may mount any Secret of its namespace (the agent's own key's, other runs' tokens): not a
        # run config's to choose.
        sources = _dicts(_dict(volume.get("projected")).get("sources"))
        if "secret" in volume or any("secret" in source or "serviceAccountToken" in source for source in sources):
            refuse("secrets", f"volume {volume.get('name')!r} mounts a Secret or token")
    _check_security_context(pod.get("securityContext"), "spec.template.spec.securityContext", refuse)
    for sysctl in _dicts((_dict(pod.get("securityContext"))).get("sysctls")):
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            refuse("sysctls", f"sysctl {sysctl.get('name')!r}")
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in _dicts(pod.get(kind)):
            _check_container(container, f"{kind[:-1]} {container.get('name')!r}", refuse)
    return problems


def _check_service_account(pod: dict[str, Any], refuse: Callable[[str, str], None]) -> None:
    # A service account is a set of rights in the cluster (the agent's own can create Jobs and patch Secrets)
    if pod.get("serviceAccountName") or pod.get("serviceAccount"):
        refuse("serviceAccount", "spec.template.spec.serviceAccountName")
    if pod.get("automountServiceAccountToken"):
        refuse("serviceAccount", "spec.template.spec.automountServiceAccountToken")


def _check_container(container: dict[str, Any], where: str, refuse: Callable[[str, str], None]) -> None:
    named = [_dict(e.get("valueFrom")).get("secretKeyRef") for e in _dicts(container.get("env"))]
    if any(named) or any("secretRef" in source for source in _dicts(container.get("envFrom"))):
        refuse("secrets", f"{where} reads a Secret into its environment")
    for port in _dicts(container.get("ports")):
        if port.get("hostPort"):
            refuse("hostPort", f"{where} binds hostPort {port['hostPort']}")
    context = _dict(container.get("securityContext"))
    if context.get("privileged"):
        refuse("privileged", f"{where} is privileged")
    added = set(_dict(context.get("capabilities")).get("add") or []) - _BASELINE_CAPABILITIES
    if added:
        refuse("capabilities", f"{where} adds capabilities {sorted(map(str, added))}")
    if context.get("procMount") not in (None, "Default"):
        refuse("procMount", f"{where} sets procMount {context['procMount']!r}")
    _check_security_context(context, f"{where} securityContext", refuse)


def _check_security_context(context: Any, where: str, refuse: Callable[[str, str], None]) -> None:
    context = _dict(context)
    if _dict(context.get("seccompProfile")).get("type") == "Unconfined":
        refuse("seccompProfile", f"{where} sets seccompProfile Unconfined")
    selinux = _dict(context.get("seLinuxOptions"))
    if selinux.get("user") or selinux.get("role") or selinux.get("type") not in (None, "", "container_t"):
        refuse("seLinuxOptions", f"{where} sets seLinuxOptions")
    if _dict(context.get("windowsOptions")).get("hostProcess"):
        refuse("hostProcess", f"{where} sets windowsOptions.hostProcess")


def plan_job(claimed: ClaimedRun, env: dict[str, str], options: KubernetesOptions, agent_name: str) -> JobPlan:
    """The run's Job and Secret.

    Raises:
        JobTemplateError: the run config's template is malformed, or asks for what the agent does not allow.
    """
    run_config: RunConfig = claimed.flow_run.run_config
    if run_config.service_account_name and "serviceAccount" not in options.allow_pod_option:
        raise JobTemplateError(
            f"the run config asks for service account {run_config.service_account_name!r}, a set of rights in the "
            "cluster that is not a run config's to choose (allow with --allow-pod-option serviceAccount)"
        )
    if run_config.job_template is not None:
        problems = template_problems(run_config.job_template, options.allow_pod_option)
        if problems:
            raise JobTemplateError("the run config's job_template goes beyond a baseline pod: " + "; ".join(problems))
        template = run_config.job_template
    else:
        template = options.job_template or default_job_template()
    job = copy.deepcopy(template)
    if job.get("kind", "Job") != "Job" or not str(job.get("apiVersion", "batch/v1")).startswith("batch/"):
        raise JobTemplateError(f"a job template must be a batch/v1 Job, not {job.get('apiVersion')} {job.get('kind')}")
    name = job_name(claimed)
    labels = {
        LABEL_FLOW_RUN_ID: claimed.flow_run.id,
        LABEL_FLOW_ID: claimed.flow.id,
        LABEL_AGENT: label_value(agent_name),
        LABEL_TENANT_ID: label_value(env.get("BATON_TENANT_ID", "")),
    }
    job["apiVersion"], job["kind"] = job.get("apiVersion", "batch/v1"), "Job"
    metadata = _put(job, "metadata")
    given_namespace = metadata.get("namespace")
    if given_namespace not in (None, options.namespace):
        raise JobTemplateError(f"the job template's namespace {given_namespace!r} is not the agent's")
    metadata.update(name=name, namespace=options.namespace)
    _put(metadata, "labels").update(labels)
    # The agent's whole name (a label value is cut and cleaned): what a restart of this agent looks for
    _put(metadata, "annotations")[ANNOTATION_AGENT_NAME] = agent_name
    spec = _put(job, "spec")
    spec.setdefault("backoffLimit", 0)
    if options.job_ttl_seconds and not options.disable_job_deletion:
        spec.setdefault("ttlSecondsAfterFinished", options.job_ttl_seconds)
    pod_template = _put(spec, "template")
    _put(_put(pod_template, "metadata"), "labels").update(labels)
    pod = _put(pod_template, "spec")
    pod.setdefault("restartPolicy", "Never")
    if pod["restartPolicy"] not in ("Never", "OnFailure"):
        raise JobTemplateError(f"a Job's pods restart Never or OnFailure, not {pod['restartPolicy']!r}")
    _set_accounts(pod, run_config, options)
    container = _flow_container(pod)
    storage = claimed.flow.storage
    storage_image = storage.image if storage.type == StorageType.DOCKER else None
    image = run_config.image or storage_image or container.get("image") or options.default_image
    if not image:
        raise JobTemplateError("no image: the run config names none, nor the template, nor the agent")
    container["image"] = image
    container.setdefault("command", ENGINE_COMMAND)
    if run_config.image_pull_policy:
        container["imagePullPolicy"] = run_config.image_pull_policy
    _set_resources(container, run_config)
    secret_values = _set_env(container, env, secret_name=name)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": options.namespace, "labels": dict(labels)},
        "stringData": {TOKEN_KEY: env.get(TOKEN_ENV, ""), **secret_values},
    }
    return JobPlan(name, job, secret)


def _set_accounts(pod: dict[str, Any], run_config: RunConfig, options: KubernetesOptions) -> None:
    """Service account and pull secrets: the run config's, else the template's, else the agent's."""
    service_account = run_config.service_account_name or pod.get("serviceAccountName") or options.service_account_name
    if service_account:
        pod["serviceAccountName"] = service_account
    else:
        # A flow needs no rights in the cluster unless someone gave its pods an account on purpose
        pod.setdefault("automountServiceAccountToken", False)
    pull_secrets = run_config.image_pull_secrets or pod.get("imagePullSecrets") or options.image_pull_secrets
    if pull_secrets:
        pod["imagePullSecrets"] = [s if isinstance(s, dict) else {"name": s} for s in pull_secrets]


def retries_possible(backoff_limit: int | None, restart_policy: str | None) -> bool:
    """Whether Kubernetes may run a Job's flow container again after it failed (then only the Job's verdict
    counts). An unset ``backoffLimit`` is Kubernetes' default, 6."""
    return (6 if backoff_limit is None else int(backoff_limit)) > 0 or restart_policy == "OnFailure"


def owner_reference(job_name_: str, job_uid: str) -> dict[str, Any]:
    """The Secret's owner: deleting the Job (cancel, TTL, by hand) deletes its token too."""
    return {"apiVersion": "batch/v1", "kind": "Job", "name": job_name_, "uid": job_uid, "blockOwnerDeletion": False}


def _flow_container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        pod["containers"] = containers = [{"name": CONTAINER_NAME}]
    if not all(isinstance(c, dict) for c in containers):
        raise JobTemplateError("spec.template.spec.containers must be a list of objects")
    return next((c for c in containers if c.get("name") == CONTAINER_NAME), containers[0])


def _set_resources(container: dict[str, Any], run_config: RunConfig) -> None:
    wanted = {
        ("requests", "cpu"): run_config.cpu_request,
        ("requests", "memory"): run_config.memory_request,
        ("limits", "cpu"): run_config.cpu_limit,
        ("limits", "memory"): run_config.memory_limit,
    }
    for (kind, resource), value in wanted.items():
        if value:
            _put(_put(container, "resources"), kind)[resource] = value


def _set_env(container: dict[str, Any], env: dict[str, str], secret_name: str) -> dict[str, str]:
    """The run's environment over the template's. Baton's own variables (ids, the API URL) are plain values; the
    token and every other value (the agent's ``--env``, the run config's: credentials, often) are references to
    the run's Secret, so whoever may read Jobs and pods does not read them.

    Returns:
        The Secret's entries for those values (``env.<NAME>``).
    """
    given = [e for e in _dicts(container.get("env")) if e.get("name") not in env and e.get("name") != TOKEN_ENV]
    ours: list[dict[str, Any]] = []
    secret_values: dict[str, str] = {}
    for key, value in env.items():
        if key == TOKEN_ENV:
            continue
        if key.upper().startswith("BATON") or not _SECRET_KEY.fullmatch(f"env.{key}"):
            ours.append({"name": key, "value": value})
            continue
        secret_values[f"env.{key}"] = value
        ours.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": f"env.{key}"}}})
    token = {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": TOKEN_KEY}}}
    container["env"] = [*given, *ours, token]
    return secret_values


def _pod_spec(template: dict[str, Any]) -> dict[str, Any]:
    return _dict(_dict(_dict(template.get("spec")).get("template")).get("spec"))


def _put(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise JobTemplateError(f"{key} must be an object in a job template, not {type(value).__name__}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
