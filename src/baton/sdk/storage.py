"""Where an agent finds a flow's code.

- ``api`` (default): the server keeps the flow file's source, so any agent anywhere can run it.
- ``local``: a path on the agent's host; registration adds this host's name as a label, so that only an agent
  on this host takes the flow's runs.
- ``docker`` and ``git`` are reserved names: registering a flow with them raises a clear error for now.

Usage::

    @flow(storage=LocalStorage())        # or storage="local"
    def nightly() -> None: ...
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


class NotYetSupportedStorage(BaseStorage):
    """``docker`` and ``git``: accepted as names, refused at registration until they are implemented."""

    def __repr__(self) -> str:
        return f"NotYetSupportedStorage({self.type.value!r})"

    def to_schema(self, flow_path: Path) -> Storage:
        raise ConfigurationError(
            f"storage {self.type.value!r} is not supported yet; use 'api' (the server keeps the source) "
            "or 'local' (a path on the agent's host)"
        )


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
    if name in STORAGE_NAMES:
        return NotYetSupportedStorage(StorageType(name))
    raise ConfigurationError(f"unknown storage {storage!r}: choose one of {', '.join(STORAGE_NAMES)}")
