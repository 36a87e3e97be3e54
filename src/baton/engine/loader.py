"""Load the flow a run needs: from the source kept by the API, or from a file on this host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baton.exceptions import FlowLoadError
from baton.schemas.core import StorageType
from baton.schemas.responses import FlowRead
from baton.sdk.flows import Flow
from baton.sdk.modules import load_module_from_path, load_module_from_source, module_name_for, module_objects


def load_flow(flow: FlowRead) -> Flow[..., Any]:
    """Return the ``Flow`` object the registered ``flow`` names, freshly loaded, its parameters' hints resolved.

    Raises:
        FlowLoadError: the code is missing, cannot be imported, has no such flow, has a parameter hint that
            cannot be resolved, or its storage is one this engine cannot read yet.
    """
    if flow.storage.type == StorageType.API:
        if not flow.source:
            raise FlowLoadError(f"flow {flow.name!r} version {flow.version} has api storage but no source")
        filename = flow.source_filename or f"<flow {flow.name}>"
        module = load_module_from_source(flow.source, filename, module_name_for(filename))
    elif flow.storage.type == StorageType.LOCAL:
        if not flow.storage.path:
            raise FlowLoadError(f"flow {flow.name!r} has local storage but no path")
        filename = flow.storage.path
        module = load_module_from_path(Path(filename))
    else:
        raise FlowLoadError(f"storage {flow.storage.type.value!r} is not supported by this engine yet")
    found = find_flow(module_objects(module, Flow), flow.entrypoint, filename)
    found.parameters.check()  # a bad hint fails the load, before the run is set Running
    return found


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
