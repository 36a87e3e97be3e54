"""`baton agent ...`: options reach the agent class as its keyword arguments and settings, bad input is one
line and exit 2, and `-t/--token` still works but warns."""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

import pytest

from baton.exceptions import AuthenticationError, BatonError
from baton.settings import BatonSettings


class FakeAgent:
    """Records how the CLI built it; ``start`` raises ``fail_with`` when set."""

    built: ClassVar[list[dict[str, Any]]] = []
    fail_with: ClassVar[BatonError | None] = None

    def __init__(self, **kwargs: Any) -> None:
        FakeAgent.built.append(kwargs)

    def start(self) -> None:
        if FakeAgent.fail_with is not None:
            raise FakeAgent.fail_with


@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> type[FakeAgent]:
    import baton.agent
    import baton.agent.local

    FakeAgent.built = []
    FakeAgent.fail_with = None
    monkeypatch.setattr(baton.agent.local, "LocalAgent", FakeAgent)
    monkeypatch.setattr(baton.agent, "LocalAgent", FakeAgent)
    return FakeAgent


def test_every_local_option_reaches_the_agent(invoke: Any, fake_agent: type[FakeAgent]) -> None:
    result = invoke(
        *("agent", "local", "start"),
        *("-k", "bat_key", "--tenant-id", "t-1", "-a", "http://127.0.0.1:9", "--agent-config-id", "cfg"),
        *("-n", "laptop", "-l", "staging", "-l", "dev", "-l", "dev", "-e", "A=1", "-e", "B=x=y"),
        *("--max-polls", "3", "--agent-address", "http://127.0.0.1:8080", "--no-cloud-logs"),
        *("--log-level", "debug", "--limit", "2", "-p", "/srv/a", "-p", "/srv/b", "-f", "--no-hostname-label"),
        *("--run-timeout", "30", "--run-as", "flows", "--allow-run-as", "etl", "--allow-run-as", "ml"),
        *("--allow-executor", "local", "--allow-executor", "dask:tcp://127.0.0.1:*", "--max-executor-processes", "6"),
        "--no-prefork",
    )
    assert result.exit_code == 0, result.output
    [kwargs] = fake_agent.built
    settings: BatonSettings = kwargs.pop("settings")
    assert kwargs == {
        "key": "bat_key",
        "key_file": None,
        "run_timeout_seconds": 30,
        "allow_executor": ["local", "dask:tcp://127.0.0.1:*"],
        "max_executor_processes": 6,
        "run_as": "flows",
        "allow_run_as": ["etl", "ml"],
        "api": "http://127.0.0.1:9",
        "tenant_id": "t-1",
        "agent_config_id": "cfg",
        "name": "laptop",
        "labels": ["dev", "staging"],
        "env": {"A": "1", "B": "x=y"},
        "max_polls": 3,
        "agent_address": "http://127.0.0.1:8080",
        "no_cloud_logs": True,
        "log_level": "DEBUG",
        "limit": 2,
        "import_paths": ["/srv/a", "/srv/b"],
        "show_flow_logs": True,
        "hostname_label": False,
        "prefork": False,
    }
    # the settings carry the same values, over env and config file
    assert settings.api.url == "http://127.0.0.1:9"
    assert settings.api.key is not None and settings.api.key.get_secret_value() == "bat_key"
    assert settings.api.tenant_id == "t-1"
    assert settings.agent.labels == ["dev", "staging"]
    assert settings.agent.env == {"A": "1", "B": "x=y"}
    assert settings.agent.import_paths == ["/srv/a", "/srv/b"]
    assert settings.agent.hostname_label is False
    assert settings.agent.show_flow_logs is True
    assert settings.logging.level == "DEBUG"
    assert settings.logging.send_to_api is False
    assert settings.agent.run_timeout_seconds == 30
    assert settings.agent.run_as == "flows"
    assert settings.agent.allow_run_as == ["etl", "ml"]
    assert settings.agent.prefork is False
    assert settings.agent.allow_executor == ["local", "dask:tcp://127.0.0.1:*"]
    assert settings.agent.max_executor_processes == 6


def test_options_left_out_leave_settings_in_charge(
    invoke: Any, fake_agent: type[FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", '["from-env"]')
    monkeypatch.setenv("BATON__AGENT__HOSTNAME_LABEL", "false")
    result = invoke("agent", "local", "start")
    assert result.exit_code == 0, result.output
    [kwargs] = fake_agent.built
    assert {k: v for k, v in kwargs.items() if k != "settings"} == {
        "key": None,
        "key_file": None,
        "run_timeout_seconds": None,
        "allow_executor": None,
        "max_executor_processes": None,
        "run_as": None,
        "allow_run_as": None,
        "api": None,
        "tenant_id": None,
        "agent_config_id": None,
        "name": None,
        "labels": None,
        "env": None,
        "max_polls": None,
        "agent_address": None,
        "no_cloud_logs": False,
        "log_level": None,
        "limit": None,
        "import_paths": None,
        "show_flow_logs": None,
        "hostname_label": None,
        "prefork": None,
    }
    assert kwargs["settings"].agent.labels == ["from-env"]
    assert kwargs["settings"].agent.hostname_label is False


def test_cli_labels_win_over_env_labels(
    invoke: Any, fake_agent: type[FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", '["from-env"]')
    assert invoke("agent", "local", "start", "-l", "cli").exit_code == 0
    assert fake_agent.built[0]["settings"].agent.labels == ["cli"]


def test_root_api_and_key_apply_to_agents(invoke: Any, fake_agent: type[FakeAgent]) -> None:
    result = invoke("-a", "http://127.0.0.1:7", "-k", "bat_root", "agent", "local", "start")
    assert result.exit_code == 0
    assert fake_agent.built[0]["api"] == "http://127.0.0.1:7"
    assert fake_agent.built[0]["key"] == "bat_root"


def test_token_is_a_deprecated_alias_of_key(invoke: Any, fake_agent: type[FakeAgent]) -> None:
    result = invoke("agent", "local", "start", "-t", "bat_old")
    assert result.exit_code == 0
    assert result.stderr.splitlines()[0] == "Warning: -t/--token is deprecated; use -k/--key instead."
    assert fake_agent.built[0]["key"] == "bat_old"

    fake_agent.built.clear()
    result = invoke("agent", "local", "start", "--token", "bat_old", "--key", "bat_new")
    assert "deprecated" in result.stderr
    assert fake_agent.built[0]["key"] == "bat_new"


@pytest.mark.parametrize("command", [("agent", "local", "start"), ("agent", "start")])
def test_a_key_on_the_command_line_is_warned_about_as_visible_in_ps(
    invoke: Any, fake_agent: type[FakeAgent], command: tuple[str, ...]
) -> None:
    result = invoke(*command, "-k", "bat_new")
    assert result.exit_code == 0
    assert result.stderr.startswith("Warning: a key given with -k/--key is on the agent's command line")
    assert "--key-file" in result.stderr
    assert "deprecated" not in result.stderr


def test_a_key_file_or_the_environment_prints_no_warning(
    invoke: Any, fake_agent: type[FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke("agent", "local", "start", "--key-file", "/etc/baton/agent.key")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert fake_agent.built[0]["key_file"] == "/etc/baton/agent.key"
    monkeypatch.setenv("BATON__API__KEY", "bat_env")
    assert invoke("agent", "local", "start").stderr == ""


def test_a_key_and_a_key_file_together_are_refused(invoke: Any, fake_agent: type[FakeAgent]) -> None:
    result = invoke("agent", "local", "start", "-k", "bat_k", "--key-file", "/etc/baton/agent.key")
    assert result.exit_code == 2
    assert "give -k/--key or --key-file, not both" in result.stderr
    assert fake_agent.built == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-e", "NOEQUALS"), "Error: --env expects KEY=VALUE, got 'NOEQUALS'"),
        (("-e", "1BAD=x"), "Error: --env '1BAD=x': '1BAD' is not a valid environment variable name"),
        (("-l", "two words"), "Error: --label: invalid label 'two words'"),
    ],
)
def test_malformed_env_or_label_is_one_line_and_no_agent(
    invoke: Any, fake_agent: type[FakeAgent], args: tuple[str, ...], message: str
) -> None:
    result = invoke("agent", "local", "start", *args)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert fake_agent.built == []


def test_fatal_agent_errors_are_one_line(invoke: Any, fake_agent: type[FakeAgent]) -> None:
    fake_agent.fail_with = AuthenticationError(401, "invalid, revoked or expired API key")
    result = invoke("agent", "local", "start")
    assert result.exit_code == 4
    assert result.stderr == (
        "Error: the API refused the key: invalid, revoked or expired API key (HTTP 401); "
        "pass --key or set BATON__API__KEY\n"
    )


def test_agent_start_uses_the_type_from_settings(
    invoke: Any, fake_agent: type[FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke("agent", "start", "-l", "dev", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert fake_agent.built[0]["labels"] == ["dev"]
    assert fake_agent.built[0]["limit"] == 1
    assert "import_paths" not in fake_agent.built[0]

    # A Kubernetes agent with no cluster configuration anywhere says so (exit 2), before any API call
    monkeypatch.setenv("BATON__AGENT__TYPE", "kubernetes")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("BATON__API__KEY", "bat_k")
    result = invoke("agent", "start", "-a", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: configuration: no Kubernetes configuration"), result.stderr
    assert len(fake_agent.built) == 1


def test_install_prints_a_supervisord_config_that_starts_the_agent_with_the_options(invoke: Any) -> None:
    result = invoke(
        *("agent", "local", "install", "-k", "bat_k", "-a", "http://127.0.0.1:4200", "-l", "dev"),
        *("-e", "A=has space", "--no-hostname-label", "--agent-address", "http://127.0.0.1:8080"),
    )
    assert result.exit_code == 0, result.output
    assert "[program:baton-agent]" in result.stdout
    [command_line] = [line for line in result.stdout.splitlines() if line.startswith("command=")]
    argv = shlex.split(command_line.removeprefix("command="))
    assert argv[1:4] == ["agent", "local", "start"]
    # Secrets stay off the command line (visible in /proc/*/cmdline): the key and --env go in environment=.
    assert argv[4:] == [
        *("--api", "http://127.0.0.1:4200", "--label", "dev", "--agent-address", "http://127.0.0.1:8080"),
        "--no-hostname-label",
    ]
    [environment] = [line for line in result.stdout.splitlines() if line.startswith("environment=")]
    assert environment == """environment=BATON__API__KEY="bat_k",BATON__AGENT__ENV='{"A": "has space"}'"""
    assert "bat_k" not in command_line


def test_install_refuses_max_polls(invoke: Any) -> None:
    result = invoke("agent", "local", "install", "--max-polls", "1")
    assert result.exit_code == 2
    assert "--max-polls does not fit an installed agent" in result.stderr


def test_prefect_1_docker_command_lines_are_accepted(invoke: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import baton.agent

    FakeAgent.built = []
    FakeAgent.fail_with = None
    monkeypatch.setattr(baton.agent, "DockerAgent", FakeAgent, raising=False)
    # The seed's own forms: a bare container path as a volume, and the deprecated --no-docker-interface
    result = invoke(
        "agent", "docker", "start", "-k", "bat_k", "--volume", "/volume1", "--volume", "/srv:/data:ro",
        "--no-docker-interface",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "--no-docker-interface is deprecated and does nothing" in result.stderr
    assert FakeAgent.built[0]["volumes"] == ["/volume1", "/srv:/data:ro"]
    assert "no_docker_interface" not in FakeAgent.built[0]


# --- the Kubernetes agent's commands -----------------------------------------------------------------


@pytest.fixture
def fake_kubernetes_agent(monkeypatch: pytest.MonkeyPatch) -> type[FakeAgent]:
    import baton.agent

    FakeAgent.built = []
    FakeAgent.fail_with = None
    monkeypatch.setattr(baton.agent, "KubernetesAgent", FakeAgent, raising=False)
    return FakeAgent


def test_kubernetes_start_in_both_word_orders_passes_its_options(
    invoke: Any, fake_kubernetes_agent: type[FakeAgent]
) -> None:
    for words in (["agent", "kubernetes", "start"], ["agent", "start", "kubernetes"]):
        result = invoke(
            *words, "-k", "bat_k", "--namespace", "flows", "--image-pull-secrets", "a, b,,", "--disable-job-deletion",
            "--service-account-name", "runner", "--limit", "3",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    first, second = fake_kubernetes_agent.built
    assert first == second
    assert (first["namespace"], first["image_pull_secrets"], first["disable_job_deletion"]) == (
        "flows",
        ["a", "b"],
        True,
    )
    assert (first["service_account_name"], first["limit"], first["key"]) == ("runner", 3, "bat_k")


def test_options_before_the_agent_type_are_refused_not_lost(
    invoke: Any, fake_kubernetes_agent: type[FakeAgent]
) -> None:
    result = invoke("agent", "start", "-l", "dev", "kubernetes")
    assert result.exit_code == 2
    assert "put the options after the agent type" in result.stderr
    assert fake_kubernetes_agent.built == []


def test_kubernetes_agent_refuses_a_bad_namespace_and_a_missing_template_clearly(tmp_path: Any) -> None:
    from baton.agent.kubernetes import KubernetesAgent
    from baton.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="namespace"):
        KubernetesAgent(key="bat_k", api="http://127.0.0.1:9", namespace="Not_A_Name", api_client=object())
    with pytest.raises(ConfigurationError, match=r"--job-template .*cannot read it"):
        KubernetesAgent(key="bat_k", api="http://127.0.0.1:9", job_template_path=str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- not\n- a job\n")
    with pytest.raises(ConfigurationError, match="must hold one Job"):
        KubernetesAgent(key="bat_k", api="http://127.0.0.1:9", job_template_path=str(tmp_path / "list.yaml"))


def test_kubernetes_install_needs_a_key_and_refuses_max_polls(invoke: Any) -> None:
    result = invoke("agent", "install", "kubernetes", "-a", "http://127.0.0.1:4200")
    assert result.exit_code == 2
    assert "needs its API key" in result.stderr
    result = invoke("agent", "kubernetes", "install", "-k", "bat_k", "--max-polls", "3")
    assert result.exit_code == 2
    assert "--max-polls does not fit an installed agent" in result.stderr


def test_kubernetes_install_puts_secrets_in_the_secret_and_the_template_in_a_config_map(
    invoke: Any, tmp_path: Any
) -> None:
    import yaml

    template = tmp_path / "job.yaml"
    template.write_text("apiVersion: batch/v1\nkind: Job\nspec: {}\n")
    result = invoke(
        "agent", "install", "kubernetes", "-k", "bat_secret_key", "-e", "TOKEN=s3cret", "--job-template", str(template),
        "--namespace", "flows", "-l", "k8s", "-a", "http://baton.flows.svc:4200",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    documents = {document["kind"]: document for document in yaml.safe_load_all(result.stdout)}
    assert set(documents) == {"Secret", "ConfigMap", "Deployment"}
    assert documents["Secret"]["stringData"] == {
        "BATON__API__KEY": "bat_secret_key",
        "BATON__AGENT__ENV": '{"TOKEN": "s3cret"}',
    }
    assert documents["ConfigMap"]["data"]["job.yaml"] == template.read_text()
    [container] = documents["Deployment"]["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:4] == ["baton", "agent", "kubernetes", "start"]
    assert "bat_secret_key" not in result.stdout.split("kind: Secret")[0] + str(command)
    assert "s3cret" not in str(command)
    assert command[command.index("--job-template") + 1] == "/etc/baton/job.yaml"
    assert command[command.index("--namespace") + 1] == "flows"
    assert command[command.index("--agent-address") + 1] == "http://0.0.0.0:8080"
    assert command[command.index("--name") + 1] == "baton-agent"  # a stable identity across pod restarts
    assert "&id" not in result.stdout  # no YAML anchors: each probe is its own mapping


def test_kubernetes_install_refuses_what_could_never_work(invoke: Any) -> None:
    cases = [
        (["-k", "bat_k"], "give -a/--api"),
        (["-k", "bat_k", "-a", "http://h:4200", "--namespace", "Bad NS"], "is not a Kubernetes namespace name"),
        (["-k", "bat_k", "-a", "http://h:4200", "--agent-address", "http://127.0.0.1:8080"], "cannot probe a loopback"),
        (["-k", "bat_k", "-a", "http://h:4200", "--agent-address", "nonsense"], "invalid agent address"),
    ]
    for args, message in cases:
        result = invoke("agent", "install", "kubernetes", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, result.stderr
