"""Flow code that travels (issue 11, §3), run by the real engine process against a real server: a bundle of the
flow's folder, a file in an image (docker storage, here a file on this host as the image would hold it), and a
Git repository (a local one, fetched by the engine)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from baton.sdk.registration import build_flow_payload, load_flows, prepare_registrations, register_prepared
from baton.sdk.storage import DockerStorage, GitStorage
from engine.conftest import Launcher

pytestmark = pytest.mark.integration

USES_HELPER = """
from baton import flow
{storage_import}
from helper import WORD


@flow{storage}
def {name}() -> str:
    print("the word is", WORD, flush=True)
    return WORD
"""


def flow_source(name: str, storage: str = "", storage_import: str = "") -> str:
    return USES_HELPER.format(name=name, storage=storage, storage_import=storage_import)


def printed(launcher: Launcher, flow_name: str) -> tuple[str, str]:
    """Run ``flow_name`` to its end: its final state and what it printed."""
    engine = launcher.start(launcher.claim(flow_name))
    engine.wait()
    run = engine.run()
    return run.state, " ".join(line.message for line in engine.logs() if line.name == "stdout") or str(
        run.state_message
    )


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


def test_a_bundled_flow_imports_its_sibling_module_on_the_engine(launcher: Launcher, tmp_path: Path) -> None:
    project = tmp_path / "bundled"
    project.mkdir()
    (project / "helper.py").write_text("WORD = 'bundled'\n")
    (project / "bundled_flow.py").write_text(flow_source("bundled_engine"))
    path = project / "bundled_flow.py"
    [registered] = register_prepared(launcher.admin, prepare_registrations([(path, f) for f in load_flows(path)]))
    assert registered.storage.bundle is not None

    assert printed(launcher, "bundled_engine") == ("Success", "the word is bundled")


def test_docker_storage_loads_the_file_at_its_path_in_the_image(launcher: Launcher, tmp_path: Path) -> None:
    inside = tmp_path / "image-root" / "opt" / "flows"
    inside.mkdir(parents=True)
    (inside / "helper.py").write_text("WORD = 'from the image'\n")
    (inside / "in_image.py").write_text(flow_source("in_image"))
    flows = load_flows(inside / "in_image.py")
    storage = DockerStorage(image="baton:0.1.0", path=str(inside / "in_image.py"))
    payload = build_flow_payload(flows[0], inside / "in_image.py", storage=storage)
    assert payload["storage"]["type"] == "docker" and payload["source"] is None
    launcher.admin.register_flow(payload)

    assert printed(launcher, "in_image") == ("Success", "the word is from the image")


def test_git_storage_fetches_the_ref_and_loads_the_path(launcher: Launcher, tmp_path: Path) -> None:
    # Given a repository with the flow in a folder and a helper beside it, tagged v1, then changed on main
    repo = tmp_path / "repo"
    (repo / "flows").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "t")
    storage = f'(storage=GitStorage({str(repo)!r}, ref="v1", path="flows/from_git.py"))'
    (repo / "flows" / "from_git.py").write_text(flow_source("from_git", storage, "from baton import GitStorage"))
    (repo / "flows" / "helper.py").write_text("WORD = 'v1'\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    git(repo, "tag", "v1")
    (repo / "flows" / "helper.py").write_text("WORD = 'main'\n")
    git(repo, "commit", "-q", "-am", "main")

    # When it is registered with git storage and run
    path = repo / "flows" / "from_git.py"
    [flow] = load_flows(path)
    assert isinstance(flow.storage, GitStorage)
    launcher.admin.register_flow(build_flow_payload(flow, path))

    # Then the engine ran the tagged commit's code
    assert printed(launcher, "from_git") == ("Success", "the word is v1")


def test_a_ref_that_is_not_there_fails_the_run_with_gits_words(launcher: Launcher, tmp_path: Path) -> None:
    repo = tmp_path / "empty-repo"
    repo.mkdir()
    git(repo, "init", "-q")
    source = textwrap.dedent(
        f"""
        from baton import flow, GitStorage

        @flow(storage=GitStorage({str(repo)!r}, ref="no-such-branch", path="f.py"))
        def missing_ref() -> None:
            pass
        """
    )
    path = launcher.write_flow("missing_ref", source)
    [flow] = load_flows(path)
    launcher.admin.register_flow(build_flow_payload(flow, path))

    state, message = printed(launcher, "missing_ref")
    assert state == "Failed"
    assert f"storage git: cannot fetch {repo}" in message and "no-such-branch" in message, message
