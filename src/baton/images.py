"""Build the Docker agent's default image, ``baton:<version>``, from a Baton source checkout.

The wheels (Baton from the local source, its dependencies from the package index) are built on the host, the
dependencies cached in ``<checkout>/.cache/wheels``. The build context is a temporary directory holding only the
project's ``Dockerfile``, ``deps/`` (the dependencies' wheels) and ``baton/`` (Baton's wheel); the build runs with
no network. The image carries the label ``io.baton.source-hash`` (a hash of ``src/``, ``pyproject.toml`` and
``Dockerfile``), so a caller can tell whether an existing image was built from the source at hand.
``baton docker build-image`` and the test suite's ``baton_image`` fixture both use this module.

Usage::

    from baton.images import build_image, connect, find_project_root

    built = build_image(connect(), find_project_root(), "baton:0.1.0", progress=print)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton import __version__
from baton.exceptions import DockerUnavailableError, ImageBuildError

__all__ = ["DockerUnavailableError", "ImageBuildError"]  # re-exported: callers catch images.ImageBuildError

if TYPE_CHECKING:
    from docker import DockerClient

SOURCE_HASH_LABEL = "io.baton.source-hash"
STAGE_LABEL = "io.baton.stage"
BASE_IMAGE = "python:3.11-slim"
DEFAULT_TAG = f"baton:{__version__}"
# The image's Python: wheels with compiled parts (pydantic-core, SQLAlchemy) must be built for this version.
TARGET_PYTHON = (3, 11)
# A fixed timestamp inside the wheels makes them byte-identical across builds of the same source, so the
# daemon's layer cache can reuse the `COPY` and `pip install` steps when nothing changed.
_SOURCE_DATE_EPOCH = "315532800"
_HASHED_FILES = ("pyproject.toml", "Dockerfile")
_SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    """An image built (or found) for one source tree."""

    tag: str
    id: str
    source_hash: str
    size: int
    built: bool


def _quiet(_: str) -> None:
    """The default progress callback: say nothing."""


# --- the source tree ----------------------------------------------------------------------------


def _is_project_root(path: Path) -> bool:
    pyproject = path / "pyproject.toml"
    if not (pyproject.is_file() and (path / "Dockerfile").is_file() and (path / "src" / "baton").is_dir()):
        return False
    try:
        name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return bool(name == "baton")


def find_project_root(start: Path | None = None) -> Path:
    """The Baton checkout to build from: ``start`` when given; else the working directory or a parent of it, else
    the checkout this ``baton`` package was imported from (an editable install).

    Raises:
        ImageBuildError: none of them is a Baton checkout with a Dockerfile.
    """
    if start is not None:
        candidates = [start.resolve()]
    else:
        here = Path.cwd().resolve()
        candidates = [here, *here.parents, Path(__file__).resolve().parent.parent.parent]
    for path in candidates:
        if _is_project_root(path):
            return path
    where = start or Path.cwd()
    raise ImageBuildError(
        f"no Baton source tree at {where} (a directory with pyproject.toml for baton, src/baton and a Dockerfile); "
        "run this in a checkout of Baton or pass --source"
    )


def _hashed_files(root: Path) -> Iterator[Path]:
    for name in _HASHED_FILES:
        yield root / name
    for dirpath, dirnames, filenames in os.walk(root / "src"):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS and not d.endswith(".egg-info"))
        for filename in sorted(filenames):
            if not filename.endswith((".pyc", ".pyo")):
                yield Path(dirpath) / filename


def source_hash(root: Path) -> str:
    """A sha256 over the paths and contents of ``src/``, ``pyproject.toml`` and ``Dockerfile`` under ``root``."""
    digest = hashlib.sha256()
    for path in _hashed_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- wheels -------------------------------------------------------------------------------------


def wheel_python() -> str:
    """A Python interpreter of the image's version (wheels of compiled packages are per version).

    Raises:
        ImageBuildError: neither this interpreter nor ``python3.11`` on PATH is Python 3.11.
    """
    if sys.version_info[:2] == TARGET_PYTHON:
        return sys.executable
    name = "python{}.{}".format(*TARGET_PYTHON)
    found = shutil.which(name)
    if found is None:
        raise ImageBuildError(
            f"the image runs Python {'.'.join(map(str, TARGET_PYTHON))}, so its wheels must be built with it; "
            f"this is Python {sys.version_info.major}.{sys.version_info.minor} and there is no {name} on PATH"
        )
    return found


def _build_requirements(root: Path) -> list[str]:
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return [str(item) for item in data.get("build-system", {}).get("requires", [])]


def _pip(python: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(
        [python, "-m", "pip", *args], env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["pip failed without a message"])[-1]


def _store_in_cache(wheels: Iterable[Path], cache: Path) -> None:
    """Copy new dependency wheels into the cache; write-then-rename, so a concurrent build never reads half a file."""
    for wheel in wheels:
        target = cache / wheel.name
        if wheel.name.startswith("baton-") or target.exists():
            continue
        partial = cache / f".{wheel.name}.{os.getpid()}.partial"
        shutil.copyfile(wheel, partial)
        partial.replace(target)


def build_wheels(root: Path, dest: Path, cache: Path, progress: Progress = _quiet) -> list[Path]:
    """Build Baton's wheel from ``root`` and collect the wheels of all its runtime dependencies (with the
    ``docker`` and ``kubernetes`` extras: the image runs the Docker and Kubernetes agents too) into ``dest``.

    The cache is tried alone first (no network); only when it lacks something does pip ask the package index,
    and what it fetched is added to the cache.

    Raises:
        ImageBuildError: pip failed (its last error line is the message).
    """
    python = wheel_python()
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    wheel_args = ["wheel", "--wheel-dir", str(dest), "--find-links", str(cache), f"{root}[docker,kubernetes]"]
    result = _pip(python, [*wheel_args, "--no-index"])
    if result.returncode == 0:
        progress(f"Wheels: built Baton, dependencies from the cache {cache}")
    else:
        progress("Wheels: the cache lacks some dependencies, fetching them from the package index")
        # The build requirements (setuptools, wheel) go into the cache too, so the next build can be offline.
        fetched = _pip(python, ["download", "--dest", str(cache), "--only-binary", ":all:", *_build_requirements(root)])
        result = fetched if fetched.returncode else _pip(python, wheel_args)
        if result.returncode:
            raise ImageBuildError(f"building the wheels failed: {_last_error_line(result.stdout + result.stderr)}")
    wheels = sorted(dest.glob("*.whl"))
    _store_in_cache(wheels, cache)
    return wheels


# --- the image ----------------------------------------------------------------------------------


def connect(base_url: str | None = None, timeout: int = 120) -> DockerClient:
    """A client of the Docker daemon at ``base_url`` (default: the environment, like the docker CLI).

    Raises:
        DockerUnavailableError: no daemon answers there.
        ImageBuildError: the docker SDK is not installed (the ``docker`` extra).
    """
    try:
        import docker
        import requests
    except ModuleNotFoundError as exc:
        raise ImageBuildError(f"this needs the docker SDK ({exc}): pip install 'baton[docker]'") from exc

    where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def make(**kwargs: Any) -> DockerClient:
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=timeout, **kwargs)
        return docker.from_env(timeout=timeout, **kwargs)

    # The SDK leaks its socket when a connection fails (a ResourceWarning), and a client that asks the daemon
    # its API version while being built is never closed when nobody answers. So: connect to a unix socket here
    # first, then ping with a client given a version, closed either way, and only then make the real client.
    try:
        if where.startswith("unix:"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect("/" + where.removeprefix("unix:").lstrip("/"))
        probe = make(version=docker.constants.MINIMUM_DOCKER_API_VERSION)
        try:
            probe.ping()
        finally:
            probe.close()
        return make()
    except (OSError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"cannot reach the Docker daemon at {where}: {exc}") from exc


def _image_attrs(client: DockerClient, name: str) -> dict[str, Any] | None:
    import docker

    try:
        return dict(client.api.inspect_image(name))
    except docker.errors.ImageNotFound:
        return None


def _labels(attrs: dict[str, Any]) -> dict[str, str]:
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def _prepare_context(root: Path, context: Path, cache: Path, progress: Progress) -> None:
    """Fill the build context: the Dockerfile, ``deps/`` and ``baton/``."""
    deps = context / "deps"
    build_wheels(root, deps, cache, progress)
    (context / "baton").mkdir()
    for wheel in deps.glob("baton-*.whl"):
        wheel.rename(context / "baton" / wheel.name)
    shutil.copyfile(root / "Dockerfile", context / "Dockerfile")


class _BuildStream:
    """Follows the classic builder's output: step lines, the last image of each stage, the error, the image id."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.image_id = ""
        self.error = ""
        self.stage_ids: list[str] = []  # the final image of each stage but the last (short ids)
        self._current = ""

    def feed(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.error = str((chunk.get("errorDetail") or {}).get("message") or chunk["error"]).strip()
        line = str(chunk.get("stream", "")).strip()
        if line.startswith("Step "):
            if " : FROM " in line and self._current:
                self.stage_ids.append(self._current)
            self.progress(line)
        elif line.startswith("---> ") and " " not in line[5:]:
            self._current = line[5:]
        elif line.startswith("Successfully built "):
            self.image_id = line.rsplit(" ", 1)[-1]
        self.image_id = str((chunk.get("aux") or {}).get("ID") or self.image_id)


def _run_build(
    client: DockerClient, context: Path, tag: str, buildargs: dict[str, str], progress: Progress
) -> _BuildStream:
    """Send the build and follow its stream to the end; the daemon's error becomes :class:`ImageBuildError`."""
    import docker
    import requests

    build = _BuildStream(progress)
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=buildargs,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
        # Read to the end even after an error (the daemon ends the stream there), so the connection is released.
        for chunk in stream:
            build.feed(chunk)
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"the image build failed: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"lost the Docker daemon during the build: {exc}") from exc
    if build.error:
        raise ImageBuildError(f"the image build failed: {build.error}")
    if not build.image_id:
        raise ImageBuildError("the image build ended without an image id")
    return build


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold ``<root>/.cache/image-build.lock`` (blocking): builds from one checkout (two test sessions, a test
    session and the CLI) take turns, so that one never removes the stage another is about to use."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = root / ".cache" / "image-build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(client: DockerClient, build: _BuildStream, previous: dict[str, Any] | None) -> None:
    """Remove what this build superseded: the image that held the tag before (once it has no tag left and no
    container uses it), and the untagged `deps` stages but the one this build used (kept as layer cache)."""
    import docker

    new_id = build.image_id
    if previous is not None and previous["Id"] != new_id and SOURCE_HASH_LABEL in _labels(previous):
        current = _image_attrs(client, previous["Id"])
        if current is not None and not current.get("RepoTags"):
            # A container still using it keeps it: that is left to `docker image prune`.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(previous["Id"])
    used = tuple(f"sha256:{short}" for short in build.stage_ids)
    for stage in client.images.list(filters={"dangling": True, "label": f"{STAGE_LABEL}=deps"}):
        if not any(str(stage.id).startswith(prefix) for prefix in used):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(stage.id)


def build_image(
    client: DockerClient,
    root: Path,
    tag: str = DEFAULT_TAG,
    progress: Progress = _quiet,
    wheel_cache: Path | None = None,
) -> BuiltImage:
    """Build ``tag`` from the checkout at ``root``: wheels on the host, then the project's Dockerfile.

    Args:
        client: the Docker daemon to build on.
        root: a Baton checkout (see :func:`find_project_root`).
        tag: the image's tag.
        progress: called with one line per step.
        wheel_cache: where wheels are cached; default ``<root>/.cache/wheels``.

    Raises:
        ImageBuildError: the wheels or the image could not be built.
        DockerUnavailableError: the daemon could not be reached.
    """
    with build_lock(root):
        return _build_image(client, root, tag, progress, wheel_cache)


def _build_image(
    client: DockerClient, root: Path, tag: str, progress: Progress, wheel_cache: Path | None = None
) -> BuiltImage:
    digest = source_hash(root)
    previous = _image_attrs(client, tag)
    with tempfile.TemporaryDirectory(prefix="baton-image-") as tmp:
        context = Path(tmp)
        _prepare_context(root, context, wheel_cache or root / ".cache" / "wheels", progress)
        progress(f"Image: building {tag} from {root / 'Dockerfile'} (source hash {digest[:12]})")
        buildargs = {"BATON_SOURCE_HASH": digest, "BATON_VERSION": __version__}
        build = _run_build(client, context, tag, buildargs, progress)
    _remove_leftovers(client, build, previous)
    attrs = _image_attrs(client, build.image_id) or {}
    return BuiltImage(tag=tag, id=build.image_id, source_hash=digest, size=int(attrs.get("Size", 0)), built=True)


def find_image(client: DockerClient, tag: str, digest: str) -> BuiltImage | None:
    """The image tagged ``tag`` if it was built from the source with hash ``digest``, else ``None``."""
    attrs = _image_attrs(client, tag)
    if attrs is None or _labels(attrs).get(SOURCE_HASH_LABEL) != digest:
        return None
    return BuiltImage(tag=tag, id=str(attrs["Id"]), source_hash=digest, size=int(attrs.get("Size", 0)), built=False)


def ensure_image(client: DockerClient, root: Path, tag: str = DEFAULT_TAG, progress: Progress = _quiet) -> BuiltImage:
    """``tag`` as built from ``root``: the existing image when its source hash matches, else a new build.

    Raises:
        ImageBuildError: the wheels or the image could not be built.
        DockerUnavailableError: the daemon could not be reached.
    """
    with build_lock(root):
        found = find_image(client, tag, source_hash(root))
        if found is not None:
            progress(f"Image: {tag} is up to date with the source (hash {found.source_hash[:12]})")
            return found
        return _build_image(client, root, tag, progress)
