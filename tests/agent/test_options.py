"""Options: explicit arguments over settings (env, config file) over defaults; the flow-run environment."""

from __future__ import annotations

import json

import pytest

from baton.agent import Agent, LocalAgent
from baton.agent.env import build_run_env
from baton.agent.testing import InMemoryAgent, InMemoryDriver
from baton.exceptions import ConfigurationError, InvalidLabelError
from baton.labels import hostname_label
from baton.settings import BatonSettings, write_config_values

from .fake_api import FakeApi


def test_labels_and_address_come_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", '["staging", "dev"]')
    monkeypatch.setenv("BATON__AGENT__AGENT_ADDRESS", "http://127.0.0.1:8080")
    monkeypatch.setenv("BATON__API__KEY", "bat_from_env")

    from_env = LocalAgent(hostname_label=False)
    assert from_env.labels == ["dev", "staging"]
    assert from_env.settings.agent.agent_address == "http://127.0.0.1:8080"

    explicit = LocalAgent(labels=["prod"], agent_address="http://127.0.0.1:9090", hostname_label=False)
    assert explicit.labels == ["prod"]
    assert explicit.settings.agent.agent_address == "http://127.0.0.1:9090"


def test_environment_beats_the_config_file_and_arguments_beat_both(monkeypatch: pytest.MonkeyPatch) -> None:
    write_config_values("api", {"url": "http://127.0.0.1:1111", "key": "bat_from_file"})
    write_config_values("agent", {"name": "file-agent", "limit": 3})
    assert LocalAgent().settings.api.url == "http://127.0.0.1:1111"
    assert LocalAgent().name == "file-agent"

    monkeypatch.setenv("BATON__API__URL", "http://127.0.0.1:2222")
    agent = LocalAgent(api="http://127.0.0.1:3333/", limit=5)
    assert agent.settings.api.url == "http://127.0.0.1:3333"
    assert agent.settings.api.key is not None and agent.settings.api.key.get_secret_value() == "bat_from_file"
    assert agent.registry.limit == 5
    assert LocalAgent().settings.api.url == "http://127.0.0.1:2222"


def test_default_name_names_the_type_and_host() -> None:
    assert LocalAgent().name.startswith("local-agent-")
    assert hostname_label().split(".")[0][:10] in LocalAgent().name


def test_invalid_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="limit"):
        LocalAgent(limit=-1)
    with pytest.raises(ConfigurationError, match="url"):
        LocalAgent(api="ftp://example")
    with pytest.raises(InvalidLabelError):
        LocalAgent(labels=["has space"])


def test_no_cloud_logs_turns_api_logging_off_for_runs() -> None:
    assert LocalAgent().send_logs_to_api is True
    assert LocalAgent(no_cloud_logs=True).send_logs_to_api is False


def test_missing_key_is_a_configuration_error_at_start() -> None:
    with pytest.raises(ConfigurationError, match="no API key"):
        LocalAgent(max_polls=0).start()


def test_an_agent_is_its_driver_composed_with_the_common_options(settings: BatonSettings) -> None:
    driver = InMemoryDriver()
    agent = Agent(driver, settings=settings, labels=["b", "a"], name="composed")
    assert (agent.driver, agent.agent_type, agent.name, agent.labels) == (driver, "memory", "composed", ["a", "b"])


def test_docker_and_kubernetes_agents_are_available() -> None:
    from baton.agent import DockerAgent

    assert DockerAgent.__init__ is not Agent.__init__
    from baton.agent import KubernetesAgent

    assert KubernetesAgent.__init__ is not Agent.__init__


def test_run_env_precedence_agent_env_then_run_config_then_baton() -> None:
    api = FakeApi()
    run_id = api.add_run(env={"A": "run", "B": "run", "BATON_FLOW_RUN_ID": "forged", "BATON__API__URL": "http://evil"})
    claimed = api.claimed_run(api.runs[run_id])

    env = build_run_env(
        claimed,
        api_url="http://127.0.0.1:4200",
        tenant_id="t1",
        agent_env={"A": "agent", "C": "agent", "BATON__API__KEY": "bat_agent_key"},
        agent_labels=["b", "a"],
    )

    assert env["A"] == "run" and env["B"] == "run" and env["C"] == "agent"
    assert env["BATON_FLOW_RUN_ID"] == run_id
    assert env["BATON__API__URL"] == "http://127.0.0.1:4200"
    assert env["BATON__API__KEY"] == claimed.run_token
    assert env["BATON_TENANT_ID"] == "t1"
    assert json.loads(env["BATON__AGENT__LABELS"]) == ["a", "b"]
    assert env["BATON__LOGGING__SEND_TO_API"] == "true"


def test_in_memory_agent_takes_common_options(api: FakeApi) -> None:
    agent = InMemoryAgent(client=api, key="bat_x", labels=["x"], name="mem")
    assert (agent.name, agent.labels, agent.agent_type) == ("mem", ["x"], "memory")


def test_run_env_drops_baton_variables_of_the_agent_and_run_config_in_any_case(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeApi()
    run_id = api.add_run(env={"baton__api__url": "http://10.9.9.9:1", "BATON_FLOW_RUN_ID": "x", "A": "run"})
    claimed = api.claimed_run(api.runs[run_id])

    env = build_run_env(
        claimed, api_url="http://127.0.0.1:4200", tenant_id="t1", agent_env={"Baton_Custom": "1", "B": "agent"}
    )

    assert {name for name in env if name.upper().startswith("BATON_")} == {
        "BATON__API__URL",
        "BATON__API__KEY",
        "BATON_FLOW_RUN_ID",
        "BATON_FLOW_ID",
        "BATON_TENANT_ID",
        "BATON__AGENT__LABELS",
        "BATON__LOGGING__SEND_TO_API",
    }
    assert env["BATON__API__URL"] == "http://127.0.0.1:4200"
    assert env["BATON_FLOW_RUN_ID"] == run_id
    assert (env["A"], env["B"]) == ("run", "agent")
    [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "BATON_FLOW_RUN_ID, Baton_Custom, baton__api__url" in warning


# --- one source of truth: the option specs -----------------------------------------------------------


def test_the_python_constructors_take_exactly_the_options_the_specs_declare() -> None:
    import inspect
    from typing import get_type_hints

    from baton.agent.base import AgentOptions
    from baton.agent.docker import DockerAgent
    from baton.agent.option_specs import COMMON_OPTIONS, DOCKER_OPTIONS, LOCAL_OPTIONS, names

    # The COMMON options are AgentOptions' keys (the deprecated -t folds into key; settings and client are Python's)
    assert set(get_type_hints(AgentOptions)) - {"settings", "client"} == set(names(COMMON_OPTIONS)) - {"token"}
    local = inspect.signature(LocalAgent.__init__).parameters
    assert {name for name, p in local.items() if p.kind is p.KEYWORD_ONLY} == set(names(LOCAL_OPTIONS))
    from baton.agent.kubernetes import KubernetesAgent
    from baton.agent.option_specs import KUBERNETES_OPTIONS

    kubernetes = inspect.signature(KubernetesAgent.__init__).parameters
    # Besides its options, the Kubernetes agent takes a template as a mapping, and a ready API client
    own_k8s = {name for name, p in kubernetes.items() if p.kind is p.KEYWORD_ONLY} - {"job_template", "api_client"}
    assert own_k8s == set(names(KUBERNETES_OPTIONS))
    docker = inspect.signature(DockerAgent.__init__).parameters
    # Besides its options, the Docker agent takes what the CLI builds from other options (policy) or no flag sets
    extra = {"policy", "registry_allow_list", "default_image"}
    own = {name for name, p in docker.items() if p.kind is p.KEYWORD_ONLY} - extra
    assert own == set(names(DOCKER_OPTIONS)) - {"no_docker_interface"}


def test_each_start_command_offers_exactly_the_flags_of_its_specs() -> None:
    import click

    from baton.agent.docker_policy import DockerPolicy, flag_of
    from baton.agent.option_specs import (
        COMMON_OPTIONS,
        DOCKER_OPTIONS,
        KUBERNETES_OPTIONS,
        LOCAL_OPTIONS,
        Kind,
        OptionSpec,
    )
    from baton.cli.agent import install_kubernetes, install_local, start_docker, start_kubernetes, start_local

    def flags(command: click.Command) -> set[str]:
        return {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}

    def declared(*specs: OptionSpec) -> set[str]:
        result: set[str] = set()
        for spec in specs:
            if spec.kind is Kind.TOGGLE:
                long = spec.flag.removeprefix("--")
                result |= {f"--{long}", f"--no-{long}"}
            else:
                result |= set(spec.flags)
        return result

    local = declared(*COMMON_OPTIONS, *LOCAL_OPTIONS)
    assert flags(start_local) == local == flags(install_local)
    policy = {flag_of(name) for name in DockerPolicy.model_fields}
    assert flags(start_docker) == declared(*COMMON_OPTIONS, *DOCKER_OPTIONS) | policy
    kubernetes = declared(*COMMON_OPTIONS, *KUBERNETES_OPTIONS)
    assert flags(start_kubernetes) == kubernetes
    assert flags(install_kubernetes) == kubernetes | {"--rbac", "--agent-image"}


def test_an_explicit_empty_list_overrides_the_settings_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", "dev")
    monkeypatch.setenv("BATON__AGENT__IMPORT_PATHS", '["/srv/flows"]')
    assert LocalAgent(key="bat_k", hostname_label=False).labels == ["dev"]
    agent = LocalAgent(key="bat_k", hostname_label=False, labels=[], import_paths=[])
    assert (agent.labels, agent.driver.options.import_paths) == ([], [])
