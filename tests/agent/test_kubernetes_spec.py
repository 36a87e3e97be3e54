"""The Kubernetes agent's Job and Secret for a run (issue 11): template precedence, labels, the token only by
reference, resources, and a run config's template refused beyond a baseline pod unless the operator allows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from baton.agent.kubernetes_spec import (
    CONTAINER_NAME,
    LABEL_AGENT,
    LABEL_FLOW_ID,
    LABEL_FLOW_RUN_ID,
    LABEL_TENANT_ID,
    TOKEN_ENV,
    JobTemplateError,
    KubernetesOptions,
    default_job_template,
    job_name,
    owner_reference,
    plan_job,
    template_problems,
)
from baton.schemas.responses import ClaimedRun

from .fake_api import FakeApi

IMAGE = "baton:test"


def claimed(**run_config: Any) -> ClaimedRun:
    api = FakeApi()
    run_id = api.add_run(type="kubernetes", **run_config)
    return api.claimed_run(api.runs[run_id])


def env_of(run: ClaimedRun) -> dict[str, str]:
    return {TOKEN_ENV: run.run_token, "BATON_FLOW_RUN_ID": run.flow_run.id, "BATON_TENANT_ID": "t-1", "FROM_RUN": "1"}


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def flow_container(job: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_of(job)["containers"] if c["name"] == CONTAINER_NAME)


def test_the_default_job_runs_the_engine_once_in_the_agents_namespace_with_the_run_labelled() -> None:
    run = claimed()
    options = KubernetesOptions(namespace="flows", default_image=IMAGE)

    plan = plan_job(run, env_of(run), options, agent_name="k8s agent/1")

    job = plan.job
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == plan.name == job_name(run)
    assert job["metadata"]["namespace"] == "flows"
    labels = {
        LABEL_FLOW_RUN_ID: run.flow_run.id,
        LABEL_FLOW_ID: run.flow.id,
        LABEL_AGENT: "k8s-agent-1",
        LABEL_TENANT_ID: "t-1",
    }
    assert job["metadata"]["labels"] == labels
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 600
    assert pod_of(job)["restartPolicy"] == "Never"
    container = flow_container(job)
    assert container["image"] == IMAGE
    assert container["command"] == ["python", "-m", "baton.engine"]


def test_the_run_token_is_only_in_the_secret_and_referenced_by_the_container() -> None:
    run = claimed()
    plan = plan_job(run, env_of(run), KubernetesOptions(default_image=IMAGE), agent_name="a")

    assert run.run_token not in json.dumps(plan.job)
    env = {e["name"]: e for e in flow_container(plan.job)["env"]}
    assert env[TOKEN_ENV] == {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": plan.name, "key": "token"}}}
    # Values other than Baton's own ids are references to the Secret too (the agent's --env are credentials, often)
    assert env["FROM_RUN"] == {
        "name": "FROM_RUN",
        "valueFrom": {"secretKeyRef": {"name": plan.name, "key": "env.FROM_RUN"}},
    }
    assert env["BATON_FLOW_RUN_ID"] == {"name": "BATON_FLOW_RUN_ID", "value": run.flow_run.id}
    assert plan.secret["stringData"]["env.FROM_RUN"] == "1"
    assert "1" not in [item.get("value") for item in env.values()]
    assert plan.secret["stringData"] == {"token": run.run_token, "env.FROM_RUN": "1"}
    assert plan.secret["metadata"]["name"] == plan.name
    assert owner_reference(plan.name, "uid-1") == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": plan.name,
        "uid": "uid-1",
        "blockOwnerDeletion": False,
    }


def test_the_run_configs_template_wins_over_the_agents_and_the_runs_env_wins_over_the_templates() -> None:
    mine = default_job_template()
    mine["spec"]["template"]["spec"]["containers"] = [
        {"name": "sidecar", "image": "busybox"},
        {"name": CONTAINER_NAME, "image": "from-template", "env": [{"name": "FROM_RUN", "value": "template"}]},
    ]
    agents = default_job_template()
    agents["spec"]["template"]["spec"]["containers"][0]["image"] = "from-agent"
    run = claimed(job_template=mine)

    plan = plan_job(run, env_of(run), KubernetesOptions(job_template=agents), agent_name="a")

    assert [c["name"] for c in pod_of(plan.job)["containers"]] == ["sidecar", CONTAINER_NAME]
    container = flow_container(plan.job)
    assert container["image"] == "from-template"
    [from_run] = [e for e in container["env"] if e["name"] == "FROM_RUN"]
    assert from_run["valueFrom"]["secretKeyRef"]["key"] == "env.FROM_RUN"
    assert mine["spec"]["template"]["spec"]["containers"][1]["image"] == "from-template"  # not changed in place
    without = claimed()
    assert (
        flow_container(plan_job(without, env_of(without), KubernetesOptions(job_template=agents), "a").job)["image"]
        == "from-agent"
    )


def test_service_account_and_pull_secrets_come_from_the_run_config_then_the_template_then_the_agent() -> None:
    # (a run config choosing a service account needs the operator's --allow-pod-option serviceAccount)
    options = KubernetesOptions(
        default_image=IMAGE,
        service_account_name="agents-sa",
        image_pull_secrets=["a-pull"],
        allow_pod_option=["serviceAccount"],
    )
    template = default_job_template()
    template["spec"]["template"]["spec"].update(serviceAccountName="template-sa", imagePullSecrets=[{"name": "t"}])
    cases = [
        (claimed(), "agents-sa", [{"name": "a-pull"}]),
        (claimed(job_template=template), "template-sa", [{"name": "t"}]),
        (
            claimed(job_template=template, service_account_name="run-sa", image_pull_secrets=["r"]),
            "run-sa",
            [{"name": "r"}],
        ),
    ]
    for run, account, secrets in cases:
        pod = pod_of(plan_job(run, env_of(run), options, "a").job)
        assert (pod["serviceAccountName"], pod["imagePullSecrets"]) == (account, secrets)


def test_a_run_config_may_not_pick_a_service_account_unless_allowed_and_pods_get_no_token_by_default() -> None:
    options = KubernetesOptions(default_image=IMAGE)
    with pytest.raises(JobTemplateError, match="--allow-pod-option serviceAccount"):
        plan_job(claimed(service_account_name="baton-agent"), {}, options, "a")
    template = default_job_template()
    template["spec"]["template"]["spec"]["serviceAccountName"] = "baton-agent"
    with pytest.raises(JobTemplateError, match=r"serviceAccountName \(allow with --allow-pod-option serviceAccount"):
        plan_job(claimed(job_template=template), {}, options, "a")
    run = claimed()
    assert pod_of(plan_job(run, env_of(run), options, "a").job)["automountServiceAccountToken"] is False


def test_resources_and_pull_policy_of_the_run_config_reach_the_container() -> None:
    run = claimed(cpu_request="250m", memory_limit="256Mi", image="mine:1", image_pull_policy="Never")
    container = flow_container(plan_job(run, env_of(run), KubernetesOptions(default_image=IMAGE), "a").job)
    assert container["image"] == "mine:1" and container["imagePullPolicy"] == "Never"
    assert container["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "256Mi"}}


@pytest.mark.parametrize(
    ("pod", "rule"),
    [
        ({"hostNetwork": True}, "hostNetwork"),
        ({"hostPID": True}, "hostPID"),
        ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "hostPath"),
        ({"containers": [{"name": "flow", "securityContext": {"privileged": True}}]}, "privileged"),
        (
            {"containers": [{"name": "flow", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
            "capabilities",
        ),
        ({"containers": [{"name": "flow", "ports": [{"containerPort": 80, "hostPort": 80}]}]}, "hostPort"),
        ({"initContainers": [{"name": "i", "securityContext": {"privileged": True}}]}, "privileged"),
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
        ({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "sysctls"),
        ({"volumes": [{"name": "key", "secret": {"secretName": "baton-agent-key"}}]}, "secrets"),
        ({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}, "secrets"),
        ({"containers": [{"name": "f", "envFrom": [{"secretRef": {"name": "baton-agent-key"}}]}]}, "secrets"),
        (
            {"containers": [{"name": "f", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "x"}}}]}]},
            "secrets",
        ),
    ],
)
def test_a_run_configs_template_beyond_a_baseline_pod_is_refused_naming_the_option(
    pod: dict[str, Any], rule: str
) -> None:
    template = default_job_template()
    template["spec"]["template"]["spec"].update(pod)
    run = claimed(job_template=template)

    with pytest.raises(JobTemplateError, match=f"--allow-pod-option {rule}"):
        plan_job(run, env_of(run), KubernetesOptions(default_image=IMAGE), "a")
    # The operator may allow it; and the agent's own template is trusted as it is
    assert template_problems(template, [rule]) == []
    agents = claimed()
    plan_job(agents, env_of(agents), KubernetesOptions(default_image=IMAGE, job_template=template), "a")


def test_baseline_capabilities_and_safe_sysctls_are_fine() -> None:
    template = default_job_template()
    pod = template["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"] = {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}
    pod["securityContext"] = {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"}]}
    assert template_problems(template) == []


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ({"apiVersion": "v1", "kind": "Pod"}, "must be a batch/v1 Job"),
        ({"metadata": {"namespace": "kube-system"}, "spec": {}}, "namespace 'kube-system' is not the agent's"),
        ({"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}, "restart Never or OnFailure"),
        ({"spec": {"template": {"spec": {"containers": ["flow"]}}}}, "list of objects"),
        ({"metadata": "x"}, "metadata must be an object"),
    ],
)
def test_a_malformed_template_is_refused_with_what_is_wrong(template: dict[str, Any], problem: str) -> None:
    run = claimed(job_template=template)
    with pytest.raises(JobTemplateError, match=problem):
        plan_job(run, env_of(run), KubernetesOptions(default_image=IMAGE), "a")


def test_a_run_without_any_image_is_refused() -> None:
    run = claimed()
    with pytest.raises(JobTemplateError, match="no image"):
        plan_job(run, env_of(run), KubernetesOptions(), "a")


def test_job_names_are_dns_labels_unique_per_run() -> None:
    run = claimed()
    run.flow_run.name = "Très Long_Name!" * 10
    name = job_name(run)
    assert len(name) <= 50 and name == name.lower()
    assert name.startswith("baton-tr-s-long-name") and run.flow_run.id.replace("-", "")[:8] in name
    assert all(c.isalnum() or c == "-" for c in name) and not name.endswith("-")
    # Another claim of the same run (a retry, an expired lease) is another Job; the same claim the same Job
    again = run.model_copy(update={"run_token": run.run_token + "x"})
    assert job_name(again) != name and job_name(run.model_copy()) == name
