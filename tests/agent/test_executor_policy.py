"""The agent's executor policy (issue 14): which executors a run config may ask of the agent's host
(``--allow-executor``, ``--max-executor-processes``), checked before a run is deployed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner

from baton.agent.executor_policy import LOCAL_PATTERNS, ExecutorPolicy
from baton.agent.option_specs import COMMON_OPTIONS, command_line
from baton.agent.testing import InMemoryAgent
from baton.cli.main import cli
from baton.exceptions import ConfigurationError

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]
CLUSTER = "dask:tcp://127.0.0.1:8786"


@pytest.mark.parametrize("spec", [None, "sequential", "thread", "thread:64", "process", "process:8", "dask", "dask:4"])
def test_by_default_every_executor_on_the_runs_own_host_is_allowed(spec: str | None) -> None:
    assert ExecutorPolicy.parse(None, None).refusal(spec) is None


@pytest.mark.parametrize("spec", [CLUSTER, "dask:tls://10.0.0.5:8786", "dask:tcp://[::1]:8786"])
def test_by_default_a_dask_address_is_refused_naming_the_flag_that_allows_it(spec: str) -> None:
    refusal = ExecutorPolicy.parse([], None).refusal(spec)

    assert refusal is not None
    assert f"executor {spec!r} is not allowed on this agent" in refusal
    assert "send the flow's code and arguments to that scheduler" in refusal
    assert f"--allow-executor {spec.lower()}" in refusal or f"--allow-executor '{spec.lower()}'" in refusal


def test_allowed_patterns_replace_the_default_and_local_names_it_again() -> None:
    only_cluster = ExecutorPolicy.parse([CLUSTER], None)
    assert only_cluster.refusal(CLUSTER) is None
    assert only_cluster.refusal("sequential") is None  # asks nothing: always allowed
    refusal = only_cluster.refusal("process:2")
    assert refusal is not None and "--allow-executor process:2" in refusal

    both = ExecutorPolicy.parse(["local", "dask:tcp://10.0.0.*:8786"], None)
    assert both.patterns[: len(LOCAL_PATTERNS)] == LOCAL_PATTERNS
    assert both.refusal("process:2") is None
    assert both.refusal("dask:tcp://10.0.0.7:8786") is None
    assert both.refusal("dask:tcp://10.0.1.7:8786") is not None


def test_a_star_spans_one_part_of_the_address_and_brackets_are_literal() -> None:
    policy = ExecutorPolicy.parse(["local", "dask:tcp://10.0.0.*:8786", "dask:tcp://[::1]:*"], None)

    assert policy.refusal("dask:tcp://10.0.0.7:8786") is None
    assert policy.refusal("dask:tcp://10.0.0.evil.example.com:8786") is not None
    assert policy.refusal("dask:tcp://10.0.0.7:9999") is not None
    assert policy.refusal("dask:tcp://[::1]:8786") is None
    assert policy.refusal("dask:tcp://1:8786") is not None  # fnmatch would read [::1] as a set of characters
    assert ExecutorPolicy.parse(["dask:*"], None).refusal("dask:tcp://127.0.0.1:8786") is not None
    assert ExecutorPolicy.parse(["dask:*"], None).refusal("dask:4") is None


def test_the_suggested_flag_allows_exactly_the_refused_address() -> None:
    spec = "dask:tcp://[::1]:8786"
    refusal = ExecutorPolicy().refusal(spec)
    assert refusal is not None
    suggested = refusal.split("--allow-executor ", 1)[1].split(" to allow it")[0].strip("'")

    assert ExecutorPolicy.parse([suggested], None).refusal(spec) is None
    assert ExecutorPolicy.parse([suggested], None).refusal("dask:tcp://[::2]:8786") is not None


def test_patterns_and_hosts_ignore_case() -> None:
    policy = ExecutorPolicy.parse(["dask:tcp://Scheduler.Internal:8786"], None)

    assert policy.refusal("dask:tcp://SCHEDULER.internal:8786") is None


def test_process_counts_are_bounded_by_four_per_cpu_unless_the_operator_says_otherwise() -> None:
    default = ExecutorPolicy(cpus=2)
    assert default.refusal("process:8") is None
    assert default.refusal("dask:8") is None
    refusal = default.refusal("process:9")
    assert refusal is not None
    assert "would start 9 processes; this agent allows at most 8" in refusal
    assert "--max-executor-processes" in refusal
    assert default.refusal("dask:9999") is not None
    assert default.refusal("thread:9999") is None  # threads stay in the run's one process

    assert ExecutorPolicy(max_processes=0, cpus=2).refusal("process:9999") is None
    small = ExecutorPolicy(max_processes=1, cpus=2)
    assert small.refusal("process:1") is None
    assert small.refusal("process") is not None  # no N: as many as the host's CPUs


@pytest.mark.parametrize("pattern", ["", "   ", "x" * 257, "dask:\x00"])
def test_a_bad_pattern_is_a_configuration_error(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="--allow-executor"):
        ExecutorPolicy.parse([pattern], None)


def test_a_negative_maximum_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="--max-executor-processes"):
        ExecutorPolicy.parse(None, -1)


def test_a_spec_the_api_would_refuse_is_refused_too() -> None:
    refusal = ExecutorPolicy().refusal("process:0")

    assert refusal is not None and "not an executor spec" in refusal


def test_a_run_asking_for_a_refused_executor_fails_before_anything_is_deployed(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    refused = app_api.add_run(executor=CLUSTER)
    too_big = app_api.admin.create_flow_run(flow_id=app_api.fake_flow(), executor="process:64").id  # this run's
    allowed = app_api.add_run(executor="thread:16")
    agent = make_app_agent(max_executor_processes=8)
    running = run_in_thread(agent)

    app_api.wait_for_state(refused, "Failed")
    app_api.wait_for_state(too_big, "Failed")
    app_api.wait_for_state(allowed, "Submitted")
    state, message, _ = app_api.last_state(refused)
    assert state == "Failed"
    assert message is not None
    assert message.startswith(f"agent {agent.name} refused to deploy the run: the run config's executor")
    assert f"--allow-executor {CLUSTER}" in message
    assert "at most 8" in (app_api.last_state(too_big)[1] or "")
    assert list(agent.driver.deployments) == [allowed]
    assert agent.status.deployment_failures == 2

    agent.stop()
    agent.finish(allowed, exit_code=0)
    running.join()


def test_an_operator_allowed_address_is_deployed(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run(executor=CLUSTER)
    agent = make_app_agent(allow_executor=["local", "dask:tcp://127.0.0.1:*"])
    running = run_in_thread(agent)

    app_api.wait_for_state(run_id, "Submitted")

    agent.stop()
    agent.finish(run_id, exit_code=0)
    running.join()


def test_the_cli_refuses_a_bad_pattern_before_starting() -> None:
    result = CliRunner().invoke(
        cli, ["agent", "local", "start", "-k", "k", "-a", "http://127.0.0.1:1", "--allow-executor", " "]
    )

    assert result.exit_code != 0
    assert "--allow-executor" in result.output
    assert "Traceback" not in result.output


def test_an_installed_agent_keeps_its_executor_policy_on_its_command_line() -> None:
    argv = command_line(COMMON_OPTIONS, {"allow_executor": ["local", CLUSTER], "max_executor_processes": 4})

    assert argv == ["--allow-executor", "local", "--allow-executor", CLUSTER, "--max-executor-processes", "4"]
