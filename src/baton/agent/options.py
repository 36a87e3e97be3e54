"""An agent's options: explicit arguments over settings over defaults, its name, logging and identity checks.

Usage::

    settings = resolve_settings(None, api={"url": "http://127.0.0.1:4200"}, agent={"labels": ["dev"]})
    name = default_agent_name("local")
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from baton.exceptions import ConfigurationError
from baton.labels import hostname_label
from baton.schemas.core import Role
from baton.schemas.responses import WhoAmI
from baton.settings import BatonSettings, load_settings

_AGENT_ROLES = {Role.RUNNER, Role.ADMIN}


def _merged(current: BaseModel, overrides: dict[str, Any]) -> BaseModel:
    given = {key: value for key, value in overrides.items() if value is not None}  # None: "not given"
    try:
        return type(current).model_validate({**current.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid agent option: {problems}") from exc


def resolve_settings(
    settings: BatonSettings | None,
    *,
    api: dict[str, Any],
    agent: dict[str, Any],
    logging: dict[str, Any] | None = None,
) -> BatonSettings:
    """``settings`` (loaded from env and config file when None) with the explicit ``api``, ``agent`` and
    ``logging`` values.

    Values given as None are not explicit: they leave the settings' value in place.

    Raises:
        ConfigurationError: a value is invalid, or the environment or config file is.
    """
    if api.get("key") is not None and api.get("key_file") is not None:
        raise ConfigurationError("give the API key or a key file (--key-file), not both")
    base = settings if settings is not None else load_settings()
    api_settings = _merged(base.api, api)
    key_file = getattr(api_settings, "key_file", None)
    if key_file:
        api_settings = api_settings.model_copy(update={"key": SecretStr(read_key_file(key_file))})
    update = {"api": api_settings, "agent": _merged(base.agent, agent), "logging": _merged(base.logging, logging or {})}
    return base.model_copy(update=update)


def read_key_file(path: str) -> str:
    """The API key held in the file at ``path``: the key alone (surrounding whitespace ignored).

    Like ssh with its private keys, a file that group or others may read or write is refused: the point of a key
    file is that no other user of the host can read the key.

    Raises:
        ConfigurationError: the file is missing, unreadable, open to group or others, or not one key.
    """
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(4096)
    except OSError as exc:
        raise ConfigurationError(f"--key-file {path}: cannot read it: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise ConfigurationError(f"--key-file {path}: not a regular file")
    if os.name == "posix" and mode & 0o077:
        raise ConfigurationError(
            f"--key-file {path} can be read or written by group or others (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"--key-file {path}: not UTF-8 text") from exc
    if not key or any(char.isspace() for char in key):
        raise ConfigurationError(f"--key-file {path}: it must hold the API key alone, on one line")
    return key


def default_agent_name(agent_type: str) -> str:
    """``<type>-agent-<hostname>``, cut to what the API accepts as a name."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", hostname_label()) or "host"
    return f"{agent_type}-agent-{host}"[:200]


def configure_agent_logging(level: str) -> None:
    """Set the level of the agent's logger and of its API client's (which logs each request at DEBUG); give each a
    handler when nothing else configured logging."""
    unconfigured = not logging.getLogger().handlers
    for name in ("baton.agent", "baton.client"):
        named = logging.getLogger(name)
        named.setLevel(level.upper())
        # Programmatic use (`LocalAgent().start()`) with logging unconfigured should still say what it does.
        if unconfigured and not named.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s | %(message)s"))
            named.addHandler(handler)


def check_identity(who: WhoAmI, wanted_tenant_id: str | None) -> None:
    """Refuse to start with a key that cannot run an agent, or of another tenant than ``--tenant-id`` (an id or a
    name).

    Raises:
        ConfigurationError: no tenant, a role other than runner/admin, or a tenant mismatch.
    """
    if not who.tenant_id:
        raise ConfigurationError("the API key belongs to no tenant: an agent needs a key of a tenant")
    if who.role not in _AGENT_ROLES:
        role = f"of role {who.role.value}" if who.role else "a run token"
        raise ConfigurationError(f"agents need a key with role runner (or admin); this key is {role}")
    # A tenant's id or its name (issue 9: `--tenant-id default` is how people name it).
    if wanted_tenant_id and wanted_tenant_id not in (who.tenant_id, who.tenant_name):
        raise ConfigurationError(
            f"--tenant-id {wanted_tenant_id} does not match the key's tenant, by id or by name: "
            f"{who.tenant_id} ({who.tenant_name})"
        )
