"""What a flow's storage may say: the one set of rules that registration (the server's ``FlowCreate``), the SDK and
the engine (before it runs ``git``) apply to a storage's repository, ref and paths.

Each function returns a problem (a sentence for an error message) or None.

Usage::

    problem = git_repo_problem("ext::sh -c 'rm -rf /'")   # "... only https://, ssh://, git://, file:// ..."
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from baton.schemas.core import RunConfig, Storage

_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
# Branch, tag or commit names as git allows them, less what could be read as an option or a range.
_REF = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/+@-]{1,255}$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^:]")  # git@host:org/repo.git
# An image reference as Docker writes them ([registry[:port]/]name[:tag][@digest]); never an option.
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,1023}$")  # tags may have capitals; Docker judges the rest


def git_repo_problem(repo: str) -> str | None:
    """Why ``repo`` may not be fetched, or None: a URL of an allowed scheme without credentials, an scp-like
    ``user@host:path``, or an absolute path."""
    if not repo or len(repo) > 4096 or any(ord(c) < 32 or c == "\x7f" for c in repo):
        return "the repository must be a URL or an absolute path, with no control characters"
    if repo.startswith("-"):
        return f"the repository {repo[:100]!r} would be read as an option"
    if repo.startswith("/") or _SCP_LIKE.match(repo):
        return None
    return _url_problem(repo)


def _url_problem(repo: str) -> str | None:
    try:
        parts = urlsplit(repo)
        hostname = parts.hostname or ""
    except ValueError:
        return f"the repository {repo[:200]!r} is not a valid URL"
    # <transport>::<address> runs a remote helper (ext:: runs a command); an IPv6 host ([::1]) is fine
    if parts.scheme not in _GIT_SCHEMES or "::" in repo.split("/", 1)[0]:
        return (
            f"the repository {repo[:200]!r} must be an https://, http://, ssh://, git:// or file:// URL, "
            "user@host:path, or an absolute path"
        )
    problems = [
        (parts.password is not None or (parts.username is not None and parts.scheme in ("https", "http")), None),
        (bool(parts.query or parts.fragment), "the repository URL must have no query (?...) or fragment (#...): "),
        (
            hostname.startswith("-") or (parts.username or "").startswith("-"),
            f"the repository {repo[:100]!r} has a host or user that ssh would read as an option",
        ),
    ]
    for failed, message in problems:
        if failed:
            return _NO_CREDENTIALS if message is None else message + ("" if message.endswith("option") else _WHY)
    return None


_WHY = "a credential there would be stored and shown"


_NO_CREDENTIALS = (
    "the repository URL must not carry credentials (they would be stored and shown): give them to git where the "
    "flow runs (a credential helper, GIT_ASKPASS)"
)


def image_problem(image: str) -> str | None:
    """Why ``image`` is not an image reference (``registry/name:tag``), or None."""
    if not _IMAGE.match(image):
        return f"the image {image[:200]!r} is not an image reference (registry/name:tag)"
    return None


def git_ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not a usable branch, tag or commit name, or None."""
    if not _REF.match(ref):
        return f"the ref {ref[:100]!r} is not a branch, tag or commit name"
    return None


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` is not a plain relative POSIX path (no ``..``, not absolute), or None."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or any(part in (".", "..") for part in parts) or "\\" in path:
        return f"the path {path[:200]!r} must be relative to the repository's top, with no '..'"
    if any(ord(c) < 32 for c in path):
        return "the path must have no control characters"
    return None


def image_path_problem(path: str) -> str | None:
    """Why ``path`` is not an absolute POSIX path of a file in an image, or None."""
    if not path.startswith("/") or ".." in PurePosixPath(path).parts or any(ord(c) < 32 for c in path):
        return f"the path in the image {path[:200]!r} must be absolute, with no '..'"
    return None


def storage_problem(storage: Storage, run_config: RunConfig) -> str | None:
    """Why a flow's storage (with its run config) cannot work, or None: what registration refuses (422)."""
    kind = storage.type.value
    if kind == "api" and storage.bundle is not None:
        return relative_path_problem(storage.path or "")
    if kind == "docker":
        if not (storage.image or run_config.image):
            return "storage 'docker' needs an image: DockerStorage(image=...) or the run config's image"
        return (image_problem(storage.image) if storage.image else None) or image_path_problem(storage.path or "")
    if kind == "git":
        if not storage.repo:
            return "storage 'git' needs a repository"
        problem = git_repo_problem(storage.repo) or relative_path_problem(storage.path or "")
        return problem or (git_ref_problem(storage.ref) if storage.ref is not None else None)
    return None
