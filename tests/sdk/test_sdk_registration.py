from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from baton.exceptions import ConfigurationError, FlowLoadError
from baton.labels import hostname_label, normalize_labels
from baton.schemas.actions import FlowCreate
from baton.sdk.registration import build_flow_payload, load_flows
from baton.sdk.run_configs import DockerRun
from baton.sdk.storage import APIStorage, LocalStorage, resolve_storage

WriteFlow = Callable[[str, str], Path]

TWO_FLOWS = '''
"""Two flows and their tasks."""
from baton import LocalRun, flow, task

ran_main = []

@task
def extract() -> int:
    return 1

@task(name="load-rows")
def load(value: int) -> None:
    print(value)

@flow(labels=["dev"], schedule={"interval": 3600})
def etl(day: str, limit: int = 10) -> None:
    """Moves rows."""
    load(extract())

@flow(name="cleanup", run_config=LocalRun(labels=["gpu"]))
def clean_up() -> None:
    pass

if __name__ == "__main__":
    ran_main.append(1)
    raise SystemExit("the __main__ block must not run on registration")
'''


def test_load_flows_returns_top_level_flows_in_file_order_without_running_main(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)

    flows = load_flows(path)

    assert [(f.name, f.entrypoint) for f in flows] == [("etl", "etl"), ("cleanup", "clean_up")]
    assert flows[0].fn.__globals__["ran_main"] == []
    assert flows[0].fn.__module__ != "__main__"


def test_load_flows_of_a_file_without_flows_is_empty(write_flow_file: WriteFlow) -> None:
    assert load_flows(write_flow_file("plain", "x = 1\n")) == []


def test_flow_file_can_import_its_sibling_modules(write_flow_file: WriteFlow) -> None:
    write_flow_file("helpers_for_flow", "GREETING = 'hi'\n")
    path = write_flow_file(
        "uses_helper",
        """
        from baton import flow
        from helpers_for_flow import GREETING

        @flow
        def greet() -> str:
            return GREETING
        """,
    )
    (greet,) = load_flows(path)
    assert greet() == "hi"


def test_registering_a_flow_with_a_mistyped_hint_fails_naming_the_parameter_and_the_hint(
    write_flow_file: WriteFlow,
) -> None:
    # Not a parameter that silently takes any value: `baton register` must tell the author about the typo.
    path = write_flow_file(
        "typo_hint",
        """
        from __future__ import annotations
        from baton import flow

        @flow
        def counts(day: str, count: itn = 1) -> None:
            pass
        """,
    )
    (counts,) = load_flows(path)

    with pytest.raises(FlowLoadError, match=r"flow 'counts': the type hint 'itn' of parameter 'count' cannot be"):
        build_flow_payload(counts, path)


def test_missing_file_is_a_flow_load_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FlowLoadError, match=r"nowhere\.py: no such file"):
        load_flows(tmp_path / "nowhere.py")


def test_syntax_error_is_a_flow_load_error_with_file_and_line(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("broken", "from baton import flow\n\n@flow\ndef f(:\n    pass\n")
    with pytest.raises(FlowLoadError) as caught:
        load_flows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 4: SyntaxError: ")
    assert "\n" not in message


def test_error_on_import_is_a_flow_load_error_with_file_line_and_error(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("raises", "import os\n\nVALUE = int(os.environ.get('NOPE', 'x'))\n")
    with pytest.raises(FlowLoadError) as caught:
        load_flows(path)
    assert str(caught.value) == (f"{path}, line 3: ValueError: invalid literal for int() with base 10: 'x'")


def test_missing_module_on_import_is_a_flow_load_error(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("needs_module", "import baton_no_such_module_here\n")
    with pytest.raises(
        FlowLoadError, match=r"line 1: ModuleNotFoundError: No module named 'baton_no_such_module_here'"
    ):
        load_flows(path)


def test_sys_exit_at_import_is_a_flow_load_error(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("exits", "import sys\nsys.exit(3)\n")
    with pytest.raises(FlowLoadError, match=r"line 2: SystemExit: 3"):
        load_flows(path)


def test_payload_for_api_storage_carries_the_source_and_validates_as_flow_create(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)
    etl, _ = load_flows(path)

    payload = build_flow_payload(etl, path)

    FlowCreate.model_validate(payload)
    assert payload["name"] == "etl"
    assert payload["entrypoint"] == "etl"
    assert payload["source"] == path.read_text()
    assert payload["source_filename"] == str(path.resolve())
    assert payload["storage"]["type"] == "api"
    assert payload["labels"] == ["dev"]
    assert payload["run_config"]["type"] == "universal"
    assert payload["tasks"] == ["extract", "load-rows"]
    [clock] = payload["schedule"]["clocks"]  # the shorthand, normalized to the schedule contract
    assert (clock["type"], clock["every"], clock["anchor"]) == ("interval", 3600, "1970-01-01T00:00:00Z")
    assert payload["description"] == "Moves rows."
    assert payload["parameters_schema"]["required"] == ["day"]
    assert payload["parameters_schema"]["properties"]["limit"]["default"] == 10


def test_payload_for_local_storage_has_the_path_and_the_hostname_label_and_no_source(
    write_flow_file: WriteFlow,
) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)
    etl, _ = load_flows(path)

    payload = build_flow_payload(etl, path, storage="local", extra_labels=["extra"])

    assert payload["storage"]["type"] == "local"
    assert payload["storage"]["path"] == str(path.resolve())
    assert payload["source"] is None
    assert payload["labels"] == normalize_labels(["dev", "extra", hostname_label()])


def test_extra_and_hostname_labels_join_run_config_labels_when_it_has_some(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)
    _, cleanup = load_flows(path)

    payload = build_flow_payload(cleanup, path, storage=LocalStorage(), extra_labels=["extra"])

    # The run config's labels win over the flow's for new runs (DESIGN.md §4): they must carry the host too.
    assert payload["run_config"]["labels"] == normalize_labels(["extra", "gpu", hostname_label()])
    assert payload["labels"] == normalize_labels(["extra", hostname_label()])


def test_api_storage_adds_no_hostname_label(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)
    _, cleanup = load_flows(path)

    payload = build_flow_payload(cleanup, path, storage="api")

    assert payload["labels"] == []
    assert payload["run_config"]["labels"] == ["gpu"]


def test_flow_storage_is_used_unless_registration_names_one(write_flow_file: WriteFlow) -> None:
    path = write_flow_file(
        "local_flow",
        """
        from baton import flow

        @flow(storage="local")
        def kept_here() -> None:
            pass
        """,
    )
    (kept_here,) = load_flows(path)

    assert build_flow_payload(kept_here, path)["storage"]["type"] == "local"
    assert build_flow_payload(kept_here, path, storage="api")["storage"]["type"] == "api"


def test_local_storage_with_an_explicit_path_uses_it(write_flow_file: WriteFlow, tmp_path: Path) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)
    etl, _ = load_flows(path)

    payload = build_flow_payload(etl, path, storage=LocalStorage(tmp_path / "deployed" / "etl.py"))

    assert payload["storage"]["path"] == str((tmp_path / "deployed" / "etl.py").resolve())


def test_storage_docker_by_name_needs_an_image_and_git_by_name_its_repository(write_flow_file: WriteFlow) -> None:
    path = write_flow_file("two_flows", TWO_FLOWS)
    etl, _ = load_flows(path)

    with pytest.raises(FlowLoadError, match="storage 'docker' needs an image"):
        build_flow_payload(etl, path, storage="docker")
    with pytest.raises(ConfigurationError, match="storage 'git' needs its repository"):
        build_flow_payload(etl, path, storage="git")
    etl.run_config = DockerRun(image="flows:1")
    payload = build_flow_payload(etl, path, storage="docker")
    assert payload["storage"] == {
        "type": "docker",
        "path": "/opt/flows/two_flows.py",
        "image": None,
        "repo": None,
        "ref": None,
        "bundle": None,
    }
    assert payload["source"] is None


def test_storage_names_resolve_to_storage_objects() -> None:
    assert resolve_storage(None) == APIStorage()
    assert resolve_storage("API") == APIStorage()
    assert resolve_storage("local") == LocalStorage()
    with pytest.raises(ConfigurationError, match="choose one of api, local, docker, git"):
        resolve_storage("s3")
