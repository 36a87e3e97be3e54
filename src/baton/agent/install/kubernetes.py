"""``baton agent install kubernetes``: the YAML that runs a Kubernetes agent in the cluster (the seed's
``prefect agent install kubernetes``), ready for ``kubectl apply -f -``.

What it holds:

- a Secret ``baton-agent`` with the API key (and the ``--env`` values, flow runs' credentials often): the
  Deployment reads them as environment variables, never from its command line;
- a ConfigMap with the ``--job-template`` file when one is given, mounted where the agent's command line says;
- a Deployment of one replica running ``baton agent kubernetes start`` with the options given (derived from the
  option specs) under a stable name (default ``baton-agent``: its Jobs' label, and its identity across restarts);
  on ``--agent-address`` (default ``http://0.0.0.0:8080``) ``/api/health`` is the readiness probe and
  ``/metrics`` the liveness probe (health is 503 during an API outage, which a restart would not cure); requests and
  limits; the labels ``app.kubernetes.io/name: baton-agent``;
- with ``rbac``: a ServiceAccount, a Role with the least the agent uses in its namespace (Jobs; pods to follow and
  delete; Secrets for the runs' tokens) and the RoleBinding.

Usage::

    print(render_kubernetes_install(key="bat_...", namespace="flows", rbac=True, values={"labels": ["k8s"]}))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baton import __version__
from baton.agent.env import is_loopback_host
from baton.agent.health import parse_address
from baton.agent.kubernetes_spec import KubernetesOptions
from baton.agent.option_specs import COMMON_OPTIONS, KUBERNETES_OPTIONS, check_installable, command_line
from baton.exceptions import ConfigurationError

NAME = "baton-agent"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "baton"}
DEFAULT_ADDRESS = "http://0.0.0.0:8080"
TEMPLATE_DIR = "/etc/baton"
# What the agent does in its namespace, and nothing more (kubernetes.py): create, follow and delete its Jobs; follow
# and delete their pods (a cancel deletes them with the grace period); create, patch (its owner, or a retried
# deploy's token) and delete the Secret of each run's token. RBAC cannot limit a verb to names made at run time, so
# these verbs reach every Secret of the namespace (a PATCH answers with the object; a Job can mount any Secret):
# the namespace is the boundary. Give flows a namespace of their own, holding no other Secret.
ROLE_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "deletecollection"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch", "delete"]},
]
SPECS = (*COMMON_OPTIONS, *KUBERNETES_OPTIONS)


def render_kubernetes_install(
    *,
    key: str | None,
    namespace: str = "default",
    rbac: bool = False,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> str:
    """The YAML documents that install a Kubernetes agent.

    Args:
        key: the agent's API key (role runner): goes into the Secret.
        namespace: the agent's namespace, and its Jobs'.
        rbac: add the ServiceAccount, Role and RoleBinding it runs as.
        image: the agent's image (default ``baton:<version>``).
        env: the ``--env`` values: into the Secret too.
        values: the other options of ``baton agent kubernetes start`` (names as in the option specs).

    Raises:
        ConfigurationError: no key, or an option an installed agent cannot take (``--max-polls``).
        TypeError: a value names no option of ``baton agent kubernetes start``.
    """
    import yaml

    if not key:
        raise ConfigurationError("the installed agent needs its API key: give -k/--key or --key-file")
    options = dict(values or {})
    check_installable(SPECS, options, "baton agent kubernetes start", "Kubernetes")
    if not (values or {}).get("api"):
        raise ConfigurationError("give -a/--api: the address of the Baton server as the agent's pod reaches it")
    try:
        KubernetesOptions(namespace=namespace)
    except ValueError as exc:
        raise ConfigurationError(f"--namespace {namespace!r} is not a Kubernetes namespace name") from exc
    for name in ("kubeconfig", "context"):  # in the cluster the agent uses its ServiceAccount
        options.pop(name, None)
    options["namespace"] = namespace
    options.setdefault("agent_address", None)
    options["agent_address"] = options["agent_address"] or DEFAULT_ADDRESS
    options["name"] = options.get("name") or NAME
    documents: list[dict[str, Any]] = []
    if rbac:
        documents += _rbac(namespace)
    secret_data = {"BATON__API__KEY": key}
    if env:
        secret_data["BATON__AGENT__ENV"] = json.dumps(dict(env))
    documents.append(_object("v1", "Secret", namespace, type="Opaque", stringData=secret_data))
    template_path = options.pop("job_template_path", None)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if template_path:
        try:
            template_text = Path(template_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"--job-template {template_path}: cannot read it: {exc.strerror}") from exc
        documents.append(
            _object("v1", "ConfigMap", namespace, name=f"{NAME}-job-template", data={"job.yaml": template_text})
        )
        volumes.append({"name": "job-template", "configMap": {"name": f"{NAME}-job-template"}})
        mounts.append({"name": "job-template", "mountPath": TEMPLATE_DIR, "readOnly": True})
        options["job_template_path"] = f"{TEMPLATE_DIR}/job.yaml"
    argv = ["baton", "agent", "kubernetes", "start", *command_line(SPECS, options)]
    documents.append(
        _deployment(namespace, image or f"baton:{__version__}", argv, options["agent_address"], rbac, volumes, mounts)
    )
    header = (
        "# A Baton Kubernetes agent (generated by `baton agent install kubernetes`). It holds the agent's API key in\n"
        "# a Secret: keep this file private. Apply it with: kubectl apply -f FILE\n"
    )
    return header + str(yaml.safe_dump_all(documents, sort_keys=False))


def _object(api_version: str, kind: str, namespace: str, name: str = NAME, **fields: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace, "labels": dict(LABELS)}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def _rbac(namespace: str) -> list[dict[str, Any]]:
    return [
        _object("v1", "ServiceAccount", namespace),
        _object("rbac.authorization.k8s.io/v1", "Role", namespace, rules=ROLE_RULES),
        _object(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            namespace,
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        ),
    ]


def _deployment(
    namespace: str,
    image: str,
    argv: list[str],
    address: str,
    rbac: bool,
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    host, port = parse_address(address)
    if is_loopback_host(host):
        raise ConfigurationError(f"--agent-address {address}: the kubelet cannot probe a loopback address (0.0.0.0)")

    def probe(path: str, **extra: Any) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "failureThreshold": 6, **extra}

    env = [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": NAME, "key": name, "optional": name != "BATON__API__KEY"}},
        }
        for name in ("BATON__API__KEY", "BATON__AGENT__ENV")
    ]
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "command": argv,
        "env": env,
        "ports": [{"name": "health", "containerPort": port}],
        "livenessProbe": probe("/metrics", initialDelaySeconds=30),
        "readinessProbe": probe("/api/health"),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"containers": [container]}
    if rbac:
        pod["serviceAccountName"] = NAME
    if volumes:
        pod["volumes"] = volumes
    # One replica: a SIGTERM is the agent's warm stop, so give it time to let its runs be reported.
    pod["terminationGracePeriodSeconds"] = 60
    return _object(
        "apps/v1",
        "Deployment",
        namespace,
        spec={
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod},
        },
    )
