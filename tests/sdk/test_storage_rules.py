"""The rules every storage's repository, ref and paths must follow (``baton.schemas.storage_rules``): each hostile
value is refused with a sentence that says why, before anything reaches ``git``."""

from __future__ import annotations

import pytest

from baton.schemas.storage_rules import git_ref_problem, git_repo_problem, image_path_problem, relative_path_problem


@pytest.mark.parametrize(
    "repo",
    [
        "https://git.example.org/data/flows.git",
        "ssh://git@git.example.org/data/flows.git",
        "git@git.example.org:data/flows.git",
        "file:///srv/git/flows.git",
        "/srv/git/flows",
        "https://[::1]:8443/flows.git",
    ],
)
def test_usual_repositories_are_accepted(repo: str) -> None:
    assert git_repo_problem(repo) is None


@pytest.mark.parametrize(
    ("repo", "why"),
    [
        ("ext::sh -c touch% /tmp/pwned", "must be an https://"),
        ("--upload-pack=touch /tmp/pwned", "would be read as an option"),
        ("-u", "would be read as an option"),
        ("https://user:token@git.example.org/flows.git", "must not carry credentials"),
        ("https://ghp_secret@git.example.org/flows.git", "must not carry credentials"),
        ("fd::17", "must be an https://"),
        ("relative/path", "must be an https://"),
        ("https://git.example.org/\nflows", "no control characters"),
        ("", "must be a URL"),
        ("https://git.example.org/flows.git?access_token=SECRET", "no query"),
        ("ssh://-oProxyCommand=touch%20x/flows", "ssh would read as an option"),
        ("-oProxyCommand=x@host:flows", "would be read as an option"),
    ],
)
def test_hostile_repositories_are_refused_saying_why(repo: str, why: str) -> None:
    problem = git_repo_problem(repo)
    assert problem is not None and why in problem


@pytest.mark.parametrize("ref", ["main", "v1.2.3", "release/2026-12", "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"])
def test_usual_refs_are_accepted(ref: str) -> None:
    assert git_ref_problem(ref) is None


@pytest.mark.parametrize("ref", ["--upload-pack=x", "-b", "main..evil", "a b", "x;rm", "", "x" * 256])
def test_hostile_refs_are_refused(ref: str) -> None:
    assert git_ref_problem(ref) is not None


def test_paths_in_a_repository_and_in_an_image() -> None:
    assert relative_path_problem("flows/etl.py") is None
    for bad in ("/etc/passwd", "../x.py", "a/../../b.py", "a\\b.py", ""):
        assert relative_path_problem(bad) is not None, bad
    assert image_path_problem("/opt/flows/etl.py") is None
    for bad in ("opt/flows/etl.py", "/opt/../etc/passwd", "/opt/\x00x"):
        assert image_path_problem(bad) is not None, bad


@pytest.mark.parametrize(
    ("storage", "run_config", "why"),
    [
        ({"type": "git", "repo": "ext::sh -c x", "path": "f.py"}, {}, "must be an https://"),
        ({"type": "git", "repo": "/srv/git/flows", "path": "../f.py"}, {}, "with no '..'"),
        ({"type": "git", "repo": "/srv/git/flows", "path": "f.py", "ref": "--upload-pack=x"}, {}, "not a branch"),
        ({"type": "git", "path": "f.py"}, {}, "needs a repository"),
        ({"type": "docker", "path": "/opt/flows/f.py"}, {}, "needs an image"),
        ({"type": "docker", "image": "flows:1", "path": "f.py"}, {}, "must be absolute"),
        ({"type": "docker", "image": "--privileged", "path": "/opt/flows/f.py"}, {}, "not an image reference"),
        ({"type": "docker", "image": "flows:1\nx", "path": "/opt/flows/f.py"}, {}, "not an image reference"),
        ({"type": "api", "bundle": "0" * 64, "path": "/etc/passwd"}, {}, "relative"),
    ],
)
def test_registration_refuses_a_storage_that_could_not_work_or_could_hurt(
    storage: dict[str, str], run_config: dict[str, str], why: str
) -> None:
    from pydantic import ValidationError

    from baton.schemas.actions import FlowCreate

    with pytest.raises(ValidationError, match=why):
        FlowCreate(name="f", entrypoint="f", source="x", storage=storage, run_config=run_config)  # type: ignore[arg-type]


def test_registration_accepts_an_image_tag_with_capitals() -> None:
    from baton.schemas.actions import FlowCreate

    storage = {"type": "docker", "image": "registry.local:5000/flows:V1.2", "path": "/opt/flows/f.py"}
    assert FlowCreate(name="f", entrypoint="f", storage=storage).storage.image == "registry.local:5000/flows:V1.2"  # type: ignore[arg-type]


def test_registration_accepts_docker_storage_with_the_run_configs_image() -> None:
    from baton.schemas.actions import FlowCreate

    flow = FlowCreate(
        name="f",
        entrypoint="f",
        storage={"type": "docker", "path": "/opt/flows/f.py"},  # type: ignore[arg-type]
        run_config={"type": "docker", "image": "flows:1"},  # type: ignore[arg-type]
    )
    assert flow.storage.path == "/opt/flows/f.py"
