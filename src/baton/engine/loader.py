"""Load the flow a run needs: from the bundle or source kept by the API, or from a file on this host.

A bundle (the flow's folder, ``baton.bundles``) is downloaded with the run's token, checked against its digest,
and unpacked into a fresh private directory, removed when the process exits; that directory goes first on
``sys.path`` (so the flow's sibling modules and packages import) and the flow file is loaded from it.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baton.exceptions import FlowLoadError
from baton.schemas.core import StorageType
from baton.schemas.responses import FlowRead
from baton.sdk.flows import Flow
from baton.sdk.modules import load_module_from_path, load_module_from_source, module_name_for, module_objects


def load_flow(flow: FlowRead, fetch_bundle: Callable[[str], bytes] | None = None) -> Flow[..., Any]:
    """Return the ``Flow`` object the registered ``flow`` names, freshly loaded, its parameters' hints resolved.

    Args:
        flow: the flow (with its source).
        fetch_bundle: downloads a bundle by digest (the run's client); needed for flows registered with one.

    Raises:
        FlowLoadError: the code is missing, cannot be imported, has no such flow, has a parameter hint that
            cannot be resolved, its bundle is not the one registered, or its storage is one this engine cannot
            read yet.
    """
    if flow.storage.type == StorageType.API and flow.storage.bundle:
        if fetch_bundle is None or not flow.storage.path:
            raise FlowLoadError(f"flow {flow.name!r} version {flow.version} has a bundle this engine cannot read")
        root = unpack_bundle(flow.storage.bundle, fetch_bundle)
        filename = str(_inside(root, flow.storage.path))
        module = load_module_from_path(Path(filename))
    elif flow.storage.type == StorageType.API:
        if not flow.source:
            raise FlowLoadError(f"flow {flow.name!r} version {flow.version} has api storage but no source")
        filename = flow.source_filename or f"<flow {flow.name}>"
        module = load_module_from_source(flow.source, filename, module_name_for(filename))
    elif flow.storage.type in (StorageType.LOCAL, StorageType.DOCKER):  # a file on this host, or in this image
        if not flow.storage.path:
            raise FlowLoadError(f"flow {flow.name!r} has {flow.storage.type.value} storage but no path")
        filename = flow.storage.path
        module = load_module_from_path(Path(filename))
    elif flow.storage.type == StorageType.GIT:
        if not flow.storage.repo or not flow.storage.path:
            raise FlowLoadError(f"flow {flow.name!r} has git storage but no repository or path")
        from baton.engine.git_source import fetch  # here: only git flows pay for it

        root = fetch(flow.storage.repo, flow.storage.ref)
        sys.path.insert(0, str(root))
        filename = str(_inside(root, flow.storage.path))
        module = load_module_from_path(Path(filename))
    else:
        raise FlowLoadError(f"storage {flow.storage.type.value!r} is not supported by this engine yet")
    found = find_flow(module_objects(module, Flow), flow.entrypoint, filename)
    found.parameters.check()  # a bad hint fails the load, before the run is set Running
    return found


def unpack_bundle(digest: str, fetch_bundle: Callable[[str], bytes]) -> Path:
    """Download bundle ``digest``, check it, unpack it into a new private directory (removed at exit), and put
    that directory first on ``sys.path``; return it.

    Raises:
        FlowLoadError: the bundle is not the one registered (digest), too big, or unsafe.
    """
    from baton.bundles import BundleError, extract, read_bundle  # here: most runs have no bundle to unpack

    try:
        files = read_bundle(fetch_bundle(digest), expected_digest=digest)
    except BundleError as exc:
        raise FlowLoadError(f"the flow's bundle {digest[:12]} cannot be used: {exc}") from None
    root = Path(tempfile.mkdtemp(prefix="baton-bundle-"))  # mode 0700: the code is this process's alone
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    try:
        extract(files, root)
    except OSError as exc:  # a disk full, a name this file system refuses
        raise FlowLoadError(f"the flow's bundle {digest[:12]} cannot be unpacked here: {exc}") from None
    sys.path.insert(0, str(root))
    return root


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refused when it leads out of ``root`` (a symlink in a fetched repository, say).

    Raises:
        FlowLoadError: it does.
    """
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise FlowLoadError(f"the flow file {relative!r} leads out of its code's folder (a symbolic link?)")
    return path


def find_flow(flows: list[Flow[..., Any]], entrypoint: str, filename: str) -> Flow[..., Any]:
    """The flow whose function is named ``entrypoint``.

    Raises:
        FlowLoadError: there is none; the message lists the flows that are there.
    """
    for candidate in flows:
        if candidate.entrypoint == entrypoint:
            return candidate
    found = ", ".join(repr(candidate.entrypoint) for candidate in flows) or "none"
    raise FlowLoadError(f"{filename}: no @flow function named {entrypoint!r} (flows found: {found})")
