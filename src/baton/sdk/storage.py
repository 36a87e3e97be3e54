"""Where an agent finds a flow's code.

- ``api`` (default): the server keeps the flow's folder as a bundle (``baton.sdk.bundling``), so any agent anywhere
  can run it, with its sibling modules and packages.
- ``local``: a path on the agent's host; registration adds this host's name as a label, so that only an agent
  on this host takes the flow's runs.
- ``docker``: the code is inside an image (``DockerStorage(image, path)``): the Docker and Kubernetes agents run the
  image, and the engine loads the file at ``path`` in it.
- ``git``: the code is in a Git repository (``GitStorage(repo, ref, path)``): the flow-run process fetches ``ref``
  and loads ``path`` from it (``git`` must be installed where the flow runs).

Usage::

    @flow(storage=LocalStorage())        # or storage="local"
    def nightly() -> None: ...

    @flow(storage=DockerStorage(image="registry.local/flows:3", path="/opt/flows/etl.py"))
    def etl() -> None: ...

    @flow(storage=GitStorage("https://git.example.org/data/flows.git", ref="main", path="flows/etl.py"))
    def etl2() -> None: ...
"""

from __future__ import annotations

from pathlib import Path

from baton.exceptions import ConfigurationError
from baton.schemas.core import Storage, StorageType

STORAGE_NAMES = tuple(kind.value for kind in StorageType)


class BaseStorage:
    """A kind of storage; subclasses say how it is stored."""

    def __init__(self, storage_type: StorageType) -> None:
        self.type = storage_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), self.type))

    def to_schema(self, flow_path: Path) -> Storage:
        """The storage as the API stores it, for the flow file at ``flow_path``."""
        return Storage(type=self.type)

    @property
    def adds_hostname_label(self) -> bool:
        return False


class APIStorage(BaseStorage):
    """The server keeps the flow's source (the default)."""

    def __init__(self) -> None:
        super().__init__(StorageType.API)


class LocalStorage(BaseStorage):
    """The flow file stays on this host at ``path`` (default: the file the flow was registered from)."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(StorageType.LOCAL)
        self.path = str(path) if path is not None else None

    def __repr__(self) -> str:
        return f"LocalStorage(path={self.path!r})"

    def to_schema(self, flow_path: Path) -> Storage:
        path = Path(self.path).expanduser() if self.path else flow_path
        return Storage(type=self.type, path=str(path.resolve()))

    @property
    def adds_hostname_label(self) -> bool:
        return True


class DockerStorage(BaseStorage):
    """The flow's code is inside an image.

    Args:
        image: the image (default: the run config's ``image``, which then must be set).
        path: the flow file's absolute path inside the image (default: ``/opt/flows/<the flow file's name>``,
            where ``baton:<version>``'s working directory is).
    """

    def __init__(self, image: str | None = None, path: str | None = None) -> None:
        super().__init__(StorageType.DOCKER)
        self.image = image
        self.path = path

    def __repr__(self) -> str:
        return f"DockerStorage(image={self.image!r}, path={self.path!r})"

    def to_schema(self, flow_path: Path) -> Storage:
        path = self.path or f"{DEFAULT_IMAGE_FLOWS_DIR}/{flow_path.name}"
        return Storage(type=self.type, image=self.image, path=path)


class GitStorage(BaseStorage):
    """The flow's code is in a Git repository, fetched by the flow-run process.

    Args:
        repo: the repository: ``https://``, ``ssh://``, ``git://``, ``file://`` or an absolute path (no credentials
            in it: give them to ``git`` where the flow runs, e.g. a credential helper in the agent's environment).
        ref: a branch, a tag or a commit (default: the remote's HEAD).
        path: the flow file's path inside the repository (default: the file's path relative to the top of the
            repository it was registered from).
    """

    def __init__(self, repo: str, ref: str | None = None, path: str | None = None) -> None:
        super().__init__(StorageType.GIT)
        self.repo = repo
        self.ref = ref
        self.path = path

    def __repr__(self) -> str:
        return f"GitStorage(repo={self.repo!r}, ref={self.ref!r}, path={self.path!r})"

    def to_schema(self, flow_path: Path) -> Storage:
        path = self.path or _path_in_repository(flow_path)
        return Storage(type=self.type, repo=self.repo, ref=self.ref, path=path)


# baton:<version>'s working directory (the Dockerfile's WORKDIR): where an image FROM it puts its flows.
DEFAULT_IMAGE_FLOWS_DIR = "/opt/flows"


def _path_in_repository(flow_path: Path) -> str:
    """``flow_path`` relative to the top of the Git work tree it is in.

    Raises:
        ConfigurationError: it is not in a Git work tree (then give ``GitStorage(path=...)``).
    """
    folder = flow_path.resolve().parent
    for top in (folder, *folder.parents):
        if (top / ".git").exists():
            return flow_path.resolve().relative_to(top).as_posix()
    raise ConfigurationError(f"{flow_path} is not in a Git work tree: give GitStorage(repo, ref, path=...)")


def resolve_storage(storage: str | BaseStorage | None) -> BaseStorage:
    """Turn a storage name (``api``, ``local``, ``docker``, ``git``) or object into a storage object.

    Raises:
        ConfigurationError: an unknown storage name.
    """
    if isinstance(storage, BaseStorage):
        return storage
    if storage is None:
        return APIStorage()
    name = storage.strip().lower()
    if name == StorageType.API:
        return APIStorage()
    if name == StorageType.LOCAL:
        return LocalStorage()
    if name == StorageType.DOCKER:
        return DockerStorage()
    if name == StorageType.GIT:
        raise ConfigurationError(
            "storage 'git' needs its repository: @flow(storage=GitStorage(repo, ref=..., path=...)) in the flow's code"
        )
    raise ConfigurationError(f"unknown storage {storage!r}: choose one of {', '.join(STORAGE_NAMES)}")
