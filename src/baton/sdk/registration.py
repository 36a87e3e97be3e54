"""Find the flows in a file and build the body of ``POST /api/flows`` for one of them.

Usage (what ``baton register PATH`` does)::

    for flow in load_flows(path):
        client.register_flow(build_flow_payload(flow, path, storage="api", extra_labels=["dev"]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from baton.exceptions import FlowLoadError
from baton.labels import hostname_label, normalize_labels
from baton.schemas.actions import FlowCreate
from baton.schemas.core import RunConfig, StorageType
from baton.sdk.flows import Flow
from baton.sdk.modules import load_module_from_path, module_objects
from baton.sdk.schedules import check_fires
from baton.sdk.storage import BaseStorage, resolve_storage
from baton.sdk.tasks import Task


def load_flows(path: Path) -> list[Flow[..., Any]]:
    """Import the flow file at ``path`` and return the flows defined at its top level, in file order.

    Raises:
        FlowLoadError: the file is missing, has a syntax error or raises on import; one line naming the file,
            the line and the error.
    """
    module = load_module_from_path(Path(path))
    return module_objects(module, Flow)


def task_names(flow: Flow[..., Any]) -> list[str]:
    """The names of the ``@task`` objects in the flow function's module (sorted, once each)."""
    module_globals: dict[str, Any] = getattr(flow.fn, "__globals__", {})
    return sorted({value.name for value in module_globals.values() if isinstance(value, Task)})


def build_flow_payload(
    flow: Flow[..., Any],
    path: Path,
    storage: str | BaseStorage | None = None,
    extra_labels: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /api/flows`` (``baton.schemas.actions.FlowCreate``) for ``flow`` from ``path``.

    Labels are the flow's labels plus ``extra_labels``, plus this host's name for local storage. When the run
    config has labels of its own (they win over the flow's for new runs, DESIGN.md §4), the extra labels and
    the hostname label are added to them too, so that they still route the runs.

    Args:
        flow: a flow returned by :func:`load_flows` for ``path``.
        path: the flow file.
        storage: ``api``, ``local``, ``docker``, ``git`` or a storage object; default: the flow's own storage.
        extra_labels: labels added at registration (``baton register --label``).

    Raises:
        ConfigurationError: an unknown storage name, or one that is not supported yet (docker, git).
        FlowLoadError: the file cannot be read, or the flow cannot be described (e.g. its source is too big).
        InvalidLabelError: an extra label is not a valid label.
        InvalidScheduleError: a clock of the flow's schedule never fires again.
    """
    path = Path(path).expanduser().resolve()
    chosen = resolve_storage(storage) if storage is not None else flow.storage
    storage_model = chosen.to_schema(path)
    added = normalize_labels(extra_labels)
    if chosen.adds_hostname_label:
        added = normalize_labels([*added, hostname_label()])
    run_config = flow.run_config.to_schema() if flow.run_config is not None else RunConfig()
    if run_config.labels and added:
        run_config.labels = normalize_labels([*run_config.labels, *added])
    source = _read_source(path) if storage_model.type == StorageType.API else None
    check_fires(flow.schedule, f"{path}: flow {flow.name!r}")
    try:
        payload = FlowCreate(
            name=flow.name,
            entrypoint=flow.entrypoint,
            source=source,
            source_filename=str(path),
            storage=storage_model,
            run_config=run_config,
            labels=normalize_labels([*flow.labels, *added]),
            parameters_schema=flow.parameters_schema(),
            tasks=task_names(flow),
            schedule=flow.schedule,
            description=flow.description,
            timeout_seconds=flow.timeout_seconds,
            retries=flow.retries,
            retry_delay_seconds=flow.retry_delay_seconds,
            max_lateness_seconds=flow.max_lateness_seconds,
            max_concurrent_runs=flow.max_concurrent_runs,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'flow'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise FlowLoadError(f"{path}: flow {flow.name!r} cannot be registered: {problems}") from None
    return payload.model_dump(mode="json")


def _read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowLoadError(f"{path}: cannot read it: {exc}") from None
