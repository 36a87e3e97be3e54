"""The Kubernetes agent on a real single-node Kubernetes 1.20 (``scripts/kubernetes/``): flows really run in pods.

One cluster for the whole file (a kubelet removes the pod containers it does not know, so two clusters on one
dockerd would fight; pytest-xdist keeps a file on one worker). Skipped without the binaries that
``scripts/kubernetes/build.sh`` makes, a failure under ``CI=true``. Pods use ``hostNetwork: true`` (no CNI here)
and the local ``baton`` image (``imagePullPolicy: Never``: nothing is pulled).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from baton.client import Client
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import FINAL_STATES
from baton.settings import BatonSettings, load_settings
from docker_support import paused_test_timeout, skip_or_fail
from support import ServerProcess, register_source_flow, wait_for

from .conftest import AgentThread
from .docker_helpers import DYING_FLOW, HOG_FLOW, SLEEPY_FLOW, register_flow, wait_state

kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")

from baton.agent.kubernetes import KubernetesAgent  # noqa: E402

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "kubernetes"
CACHE = Path(os.environ.get("BATON_K8S_CACHE", "/var/cache/baton-kubernetes"))
NAMESPACE = "default"
RunInThread = Callable[[Any], AgentThread]


@dataclass
class Cluster:
    directory: Path
    env: dict[str, str]

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.env["KUBECTL"], "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


def _wait_for_a_build_in_progress() -> None:
    """Under .ci/run the binaries build in the background while the suite runs: wait for that build to end."""
    pid_file, stamp = CACHE / "ci-build.pid", CACHE / "bin" / ".stamp"
    if stamp.exists() or not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip() or 0)
    started = time.monotonic()
    with paused_test_timeout():
        while not stamp.exists() and Path(f"/proc/{pid}").exists() and time.monotonic() - started < 45 * 60:
            time.sleep(5)
    print(f"kubernetes: waited {time.monotonic() - started:.0f} s for the background build of the binaries")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _wait_for_a_build_in_progress()
    if not (CACHE / "bin" / ".stamp").exists():
        skip_or_fail(
            f"no Kubernetes binaries in {CACHE}/bin: run scripts/kubernetes/build.sh (~15 min, once; under .ci/run "
            f"see {CACHE}/ci-build.log)"
        )
    if os.geteuid() != 0 or shutil.which("docker") is None:
        skip_or_fail("the single-node cluster needs root and a Docker daemon")
    directory = tmp_path_factory.mktemp("k8s")
    started = subprocess.run(
        ["bash", str(SCRIPTS / "start-cluster.sh"), str(directory)], capture_output=True, text=True, timeout=300
    )
    if started.returncode != 0:
        pytest.fail(f"start-cluster.sh failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}", pytrace=False)
    env = dict(line.split("=", 1) for line in (directory / "cluster.env").read_text().splitlines() if "=" in line)
    try:
        yield Cluster(directory, env)
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop-cluster.sh"), str(directory)], capture_output=True, timeout=120)


def job_template(image: str) -> dict[str, Any]:
    """The operator's template: host network (no CNI here), local images only."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "spec": {
                    "hostNetwork": True,
                    "containers": [{"name": "flow", "image": image, "imagePullPolicy": "Never"}],
                }
            }
        },
    }


@pytest.fixture
def runner_key(admin: Client) -> str:
    return admin.create_api_key("runner", name="kubernetes agent tests").key


@pytest.fixture
def fast_settings() -> BatonSettings:
    return load_settings(agent={"poll_wait_seconds": 1.0, "heartbeat_interval_seconds": 0.5})


@pytest.fixture
def k8s_agent(
    cluster: Cluster, server: ServerProcess, runner_key: str, fast_settings: BatonSettings, baton_image: str
) -> Callable[..., KubernetesAgent]:
    def _make(**options: Any) -> KubernetesAgent:
        options.setdefault("job_template", job_template(baton_image))
        options.setdefault("name", "k8s-test")
        return KubernetesAgent(
            settings=fast_settings,
            key=runner_key,
            api=server.url,
            kubeconfig=cluster.kubeconfig,
            namespace=NAMESPACE,
            **options,
        )

    return _make


def register(admin: Client, name: str, source: str, entrypoint: str, **run_config: Any) -> None:
    register_flow(admin, name, source, entrypoint, type="kubernetes", **run_config)


def running_sleepy_run(admin: Client, start_agent: Callable[[], Any]) -> tuple[str, FlowRunRead, str, Any]:
    """A sleepy run Running in a pod of the agent ``start_agent`` starts: its id, the run, its Job's name, and what
    ``start_agent`` returned."""
    register(admin, "sleepy-k8s", SLEEPY_FLOW, "sleepy")
    run_id = admin.create_flow_run(flow_name="sleepy-k8s").id
    started = start_agent()
    run = wait_state(admin, run_id, {"Running", *FINAL_STATES}, timeout=90)
    assert run.state == "Running", run.state_message
    job_name = next(state for state in run.states if state.name == "Submitted").data["job_name"]
    return run_id, run, job_name, started


def stop(agent: KubernetesAgent, running: AgentThread) -> None:
    agent.stop(cold=True)
    running.join(60)


def jobs_of(cluster: Cluster, run_id: str) -> list[str]:
    found = cluster.kubectl("get", "jobs", "-l", f"baton.io/flow-run-id={run_id}", "-o", "name", check=False)
    return [line for line in found.stdout.split() if line]


def event_lines(admin: Client, run_id: str, text: str) -> list[Any]:
    """The run's log lines made of its pod's events that contain ``text``."""
    return [line for line in admin.get_logs(run_id).logs if line.name == "kubernetes" and text in line.message]


def test_a_flow_runs_in_a_pod_to_success_with_its_logs_and_its_job_is_cleaned_up(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    register_source_flow(admin, "hello-k8s", run_config={"type": "kubernetes"})
    run_id = admin.create_flow_run(flow_name="hello-k8s", parameters={"name": "kubernetes"}).id
    agent = k8s_agent()
    running = run_in_thread(agent)
    started = time.monotonic()

    run = wait_state(admin, run_id, FINAL_STATES, timeout=120)

    assert run.state == "Success", run.state_message
    assert [state.name for state in run.states] == ["Scheduled", "Pending", "Submitted", "Running", "Success"]
    submitted = next(state for state in run.states if state.name == "Submitted")
    job_name = submitted.data["job_name"]
    assert submitted.message == f"Job: {job_name}" and submitted.data["namespace"] == NAMESPACE
    logs = [line.message for line in admin.get_logs(run_id).logs]
    assert any("hello kubernetes" in message for message in logs), logs
    # The pod's events reach the run's logs too (shipped by the agent as they come)
    wait_for(lambda: event_lines(admin, run_id, ": Started:"), timeout=30, what="the pod's Started event in its logs")
    # The finished Job is deleted, and its token's Secret with it (the Job owns it)
    wait_for(lambda: not jobs_of(cluster, run_id), timeout=60, what="the Job to be deleted")
    wait_for(
        lambda: cluster.kubectl("get", "secret", job_name, check=False).returncode != 0,
        timeout=60,
        what="the Secret to go with its Job",
    )
    print(f"kubernetes: created -> Success in {time.monotonic() - started:.1f} s")
    stop(agent, running)
    # The stopped agent's watch threads have ended: their watches were cut, not left open for up to a minute
    # (an open watch also held the API server's graceful shutdown for 20 s at the end of this module)
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("baton-k8s-")] == []


def test_an_image_that_cannot_be_pulled_fails_the_run_with_kubernetes_reason(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    register_source_flow(admin, "no-image", run_config={"type": "kubernetes", "image": "baton-not-here:1"})
    run_id = admin.create_flow_run(flow_name="no-image").id
    agent = k8s_agent()
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)

    assert run.state == "Failed"
    assert "the flow container cannot start: ErrImageNeverPull" in (run.state_message or ""), run.state_message
    # Kubernetes' own warning is in the run's logs, at WARNING
    wait_for(
        lambda: [line for line in event_lines(admin, run_id, "ErrImageNeverPull") if line.level == 30],
        timeout=30,
        what="the pod's ErrImageNeverPull warning in the run's logs",
    )
    wait_for(lambda: not jobs_of(cluster, run_id), timeout=60, what="the failed run's Job to be deleted")
    stop(agent, running)


def test_an_oom_killed_pod_fails_the_run_saying_so(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    register(admin, "hog-k8s", HOG_FLOW, "hog", memory_limit="96Mi")
    run_id = admin.create_flow_run(flow_name="hog-k8s", parameters={"megabytes": 1024}).id
    agent = k8s_agent()
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=120)

    assert run.state == "Failed"
    # OOMKilled, or (when the runtime missed the cgroup's OOM event, seen under load) SIGKILL beside the limit
    said = (
        "was OOM-killed (OOMKilled) (exit code 137)",
        "out of memory (its limit is 96Mi) unless evicted (exit code 137)",
    )
    assert any(words in (run.state_message or "") for words in said), run.state_message
    stop(agent, running)


def test_a_flow_process_that_dies_fails_the_run_with_its_exit_code_and_last_lines(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    register(admin, "dies-k8s", DYING_FLOW, "dies")
    run_id = admin.create_flow_run(flow_name="dies-k8s").id
    agent = k8s_agent()
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=120)

    assert run.state == "Failed"
    message = run.state_message or ""
    assert "(exit code 3)" in message and "last log lines:" in message, message
    assert message.rstrip().endswith("the disk is on fire"), message
    stop(agent, running)


def test_the_job_carries_the_runs_labels_and_its_token_only_by_reference_and_cancel_deletes_it(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    import json

    agent = k8s_agent()
    run_id, run, job_name, running = running_sleepy_run(admin, lambda: run_in_thread(agent))

    # The Job and its pod are labelled with the run, the flow and the agent; the token is in the owned Secret
    job = json.loads(cluster.kubectl("get", "job", job_name, "-o", "json").stdout)
    labels = {"baton.io/flow-run-id": run_id, "baton.io/flow-id": run.flow_id, "baton.io/agent": "k8s-test"}
    assert labels.items() <= job["metadata"]["labels"].items()
    assert labels.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    [container] = job["spec"]["template"]["spec"]["containers"]
    token = next(item for item in container["env"] if item["name"] == "BATON__API__KEY")
    assert token == {"name": "BATON__API__KEY", "valueFrom": {"secretKeyRef": {"name": job_name, "key": "token"}}}
    secret = json.loads(cluster.kubectl("get", "secret", job_name, "-o", "json").stdout)
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", job_name, job["metadata"]["uid"])

    # When the run is cancelled, the agent deletes the Job, its pod goes, and the run ends Cancelled
    admin.cancel_flow_run(run_id)
    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)
    assert run.state == "Cancelled", run.state_message
    wait_for(lambda: not jobs_of(cluster, run_id), timeout=60, what="the cancelled run's Job to be deleted")
    wait_for(
        lambda: not cluster.kubectl("get", "pods", "-l", f"job-name={job_name}", "-o", "name").stdout.strip(),
        timeout=90,
        what="the cancelled run's pod to go",
    )
    stop(agent, running)


def test_a_job_deleted_from_outside_fails_its_run(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    agent = k8s_agent()
    run_id, run, job_name, running = running_sleepy_run(admin, lambda: run_in_thread(agent))

    cluster.kubectl("delete", "job", job_name, "--wait=false")

    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)
    assert run.state == "Failed", run.state_message
    stop(agent, running)


def test_an_agent_restarted_under_the_same_name_adopts_its_jobs_and_deletes_those_of_ended_runs(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    # Given an agent that deployed two runs and left (--max-polls: their Jobs run on, as after a crash)
    register(admin, "sleepy-k8s", SLEEPY_FLOW, "sleepy")
    kept, ended = (admin.create_flow_run(flow_name="sleepy-k8s").id for _ in range(2))
    run_in_thread(k8s_agent(max_polls=1, limit=2)).join(60)
    for run_id in (kept, ended):
        run = wait_state(admin, run_id, {"Running", *FINAL_STATES}, timeout=90)
        assert run.state == "Running", run.state_message
    [kept_job] = jobs_of(cluster, kept)
    # And one of the runs ended meanwhile (an operator failed it)
    admin.set_flow_run_state(ended, "Failed", "failed by hand")

    # When an agent process of the same name starts
    second = k8s_agent()
    restarted = run_in_thread(second)

    # Then it adopts the other run's Job (it holds the run and vouches for it) and deletes the ended run's
    wait_for(lambda: kept in second.registry, timeout=30, what="the second agent to adopt the running run")
    wait_for(lambda: not jobs_of(cluster, ended), timeout=60, what="the ended run's Job to be deleted")
    assert admin.get_flow_run(kept).state == "Running"
    # And a cancel of the adopted run deletes its Job (the pod's engine, stopped while the run is Cancelling,
    # may report Cancelled first: the Job then finishes, and goes all the same)
    admin.cancel_flow_run(kept)
    run = wait_state(admin, kept, FINAL_STATES, timeout=90)
    assert run.state == "Cancelled", run.state_message
    wait_for(lambda: not jobs_of(cluster, kept), timeout=60, what=f"{kept_job} to be deleted")
    stop(second, restarted)


def test_watches_that_time_out_resume_and_never_end_a_healthy_run(
    cluster: Cluster, admin: Client, k8s_agent: Callable[..., KubernetesAgent], run_in_thread: RunInThread
) -> None:
    # Given watches that the API server ends every second (a watch timing out once made healthy runs "Crashed")
    register(admin, "sleepy-k8s", SLEEPY_FLOW, "sleepy")
    run_id = admin.create_flow_run(flow_name="sleepy-k8s", parameters={"seconds": 6}).id
    agent = k8s_agent()
    agent.driver.watch_seconds = 1
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=120)

    assert run.state == "Success", run.state_message
    assert agent.status.unhealthy_reason() is None
    stop(agent, running)


def test_a_pod_that_cannot_be_scheduled_fails_its_run_after_the_pending_timeout(
    cluster: Cluster,
    admin: Client,
    baton_image: str,
    k8s_agent: Callable[..., KubernetesAgent],
    run_in_thread: RunInThread,
) -> None:
    template = job_template(baton_image)
    template["spec"]["template"]["spec"]["nodeSelector"] = {"baton.io/nowhere": "true"}
    register_source_flow(admin, "unschedulable", run_config={"type": "kubernetes"})
    run_id = admin.create_flow_run(flow_name="unschedulable").id
    agent = k8s_agent(job_template=template, pending_timeout_seconds=2)
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)

    assert run.state == "Failed"
    assert "its pod did not start within" in (run.state_message or ""), run.state_message
    assert "0/1 nodes are available" in (run.state_message or "")
    wait_for(lambda: not jobs_of(cluster, run_id), timeout=60, what="the Job to be deleted")
    stop(agent, running)


def _install_yaml(*args: str) -> str:
    from click.testing import CliRunner

    from baton.cli.main import cli

    result = CliRunner().invoke(cli, ["agent", "install", "kubernetes", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _service_account_client(cluster: Cluster, namespace: str) -> Any:
    """An API client holding the token of the ServiceAccount ``install --rbac`` made."""
    import base64

    def token_secret() -> str | None:
        found = cluster.kubectl("get", "sa", "baton-agent", "-n", namespace, "-o", "jsonpath={.secrets[0].name}")
        return found.stdout.strip() or None

    secret = wait_for(token_secret, timeout=60, what="the ServiceAccount's token")
    encoded = cluster.kubectl("get", "secret", str(secret), "-n", namespace, "-o", "jsonpath={.data.token}").stdout
    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.env["BATON_K8S_API_URL"]
    configuration.ssl_ca_cert = cluster.env["BATON_K8S_CA_FILE"]
    configuration.api_key = {"authorization": "Bearer " + base64.b64decode(encoded).decode()}
    return kubernetes.client.ApiClient(configuration)


def test_install_rbac_yaml_is_accepted_and_its_service_account_can_run_flows_and_nothing_more(
    cluster: Cluster,
    admin: Client,
    runner_key: str,
    server: ServerProcess,
    fast_settings: BatonSettings,
    baton_image: str,
    run_in_thread: RunInThread,
) -> None:
    import yaml

    namespace = "baton-rbac"
    cluster.kubectl("create", "namespace", namespace, check=False)
    text = _install_yaml("-k", runner_key, "-a", server.url, "--rbac", "--namespace", namespace, "-l", "k8s")

    # The server accepts every object as printed
    dry_run = subprocess.run(
        [cluster.env["KUBECTL"], "--kubeconfig", cluster.kubeconfig, "apply", "--dry-run=server", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    documents = list(yaml.safe_load_all(text))
    kinds = [document["kind"] for document in documents]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "Secret", "Deployment"]
    [deployment] = [document for document in documents if document["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert runner_key not in " ".join(container["command"])  # the key is in the Secret only
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"  # an API outage must not restart it

    # Given the ServiceAccount, its Role and binding applied (not the Deployment: no pod network here)
    rbac = yaml.safe_dump_all([document for document in documents if document["kind"] != "Deployment"])
    subprocess.run(
        [cluster.env["KUBECTL"], "--kubeconfig", cluster.kubeconfig, "apply", "-f", "-"],
        input=rbac,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    client = _service_account_client(cluster, namespace)

    # Then an agent holding only that account's token runs a flow in a pod to Success
    register_source_flow(admin, "hello-rbac", labels=["k8s"], run_config={"type": "kubernetes"})
    run_id = admin.create_flow_run(flow_name="hello-rbac").id
    agent = KubernetesAgent(
        settings=fast_settings,
        key=runner_key,
        api=server.url,
        labels=["k8s"],
        name="k8s-rbac",
        namespace=namespace,
        job_template=job_template(baton_image),
        api_client=client,
    )
    running = run_in_thread(agent)
    run = wait_state(admin, run_id, FINAL_STATES, timeout=120)
    assert run.state == "Success", run.state_message
    wait_for(lambda: not jobs_of_in(cluster, run_id, namespace), timeout=60, what="the Job to be deleted")
    stop(agent, running)

    # And nothing more: no Secret of the namespace can be read (not even the agent's own key), no other namespace's
    # Jobs listed, no other kind of object made
    core, batch, apps = (
        kubernetes.client.CoreV1Api(client),
        kubernetes.client.BatchV1Api(client),
        kubernetes.client.AppsV1Api(client),
    )
    refused = [
        lambda: core.read_namespaced_secret("baton-agent", namespace),
        lambda: core.list_namespaced_secret(namespace),
        lambda: batch.list_namespaced_job("default"),
        lambda: apps.create_namespaced_deployment(namespace, deployment),
        lambda: core.create_namespaced_pod(namespace, {"metadata": {"name": "x"}, "spec": {"containers": []}}),
    ]
    for call in refused:
        with pytest.raises(kubernetes.client.exceptions.ApiException) as denied:
            call()
        assert denied.value.status == 403


def jobs_of_in(cluster: Cluster, run_id: str, namespace: str) -> list[str]:
    found = cluster.kubectl(
        "get", "jobs", "-n", namespace, "-l", f"baton.io/flow-run-id={run_id}", "-o", "name", check=False
    )
    return [line for line in found.stdout.split() if line]
