"""Find the flows in a file and build the body of ``POST /api/flows`` for one of them.

Usage (what ``baton register PATH`` does)::

    registrations = prepare_registrations([(path, flow) for flow in load_flows(path)], storage=None)
    registered = register_prepared(client, registrations)   # uploads each bundle once, then registers

``build_flow_payload`` alone makes the body of one flow whose file travels alone (no bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from baton.bundles import Bundle, BundleError
from baton.exceptions import FlowLoadError
from baton.labels import hostname_label, normalize_labels
from baton.schemas.actions import FlowCreate
from baton.schemas.core import RunConfig, StorageType
from baton.sdk.bundling import bundle_directory, bundle_root, flow_path_in_bundle
from baton.sdk.flows import Flow
from baton.sdk.modules import load_module_from_path, module_objects
from baton.sdk.schedules import check_fires
from baton.sdk.storage import BaseStorage, resolve_storage
from baton.sdk.tasks import Task

if TYPE_CHECKING:
    from baton.client.http import Client
    from baton.schemas.responses import FlowRead


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
    bundle: tuple[str, str] | None = None,
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
        bundle: for api storage, the digest of the bundle that holds the flow's folder and the flow file's path in
            it (:func:`prepare_registrations` builds it); None: the flow file alone travels.

    Raises:
        ConfigurationError: an unknown storage name, or one that is not supported yet (docker, git).
        FlowLoadError: the file cannot be read, or the flow cannot be described (e.g. its source is too big).
        InvalidLabelError: an extra label is not a valid label.
        InvalidScheduleError: a clock of the flow's schedule never fires again.
    """
    path = Path(path).expanduser().resolve()
    chosen = chosen_storage(flow, storage)
    storage_model = chosen.to_schema(path)
    if bundle is not None and storage_model.type == StorageType.API:
        storage_model.bundle, storage_model.path = bundle
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
        # Bytes as they are (read_text would turn CRLF into LF): the source must be the bundle's file exactly
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowLoadError(f"{path}: cannot read it: {exc}") from None


def chosen_storage(flow: Flow[..., Any], storage: str | BaseStorage | None) -> BaseStorage:
    """The storage a registration uses: ``storage`` (``--storage``), else the flow's own. A name that is the kind
    of the flow's own storage object keeps that object (``--storage docker`` on a flow with a ``DockerStorage``
    keeps its image and path).

    Raises:
        ConfigurationError: an unknown name, or ``git`` for a flow whose code names no repository.
    """
    if storage is None:
        return flow.storage
    if isinstance(storage, str) and storage.strip().lower() == flow.storage.type.value:
        return flow.storage
    return resolve_storage(storage)


@dataclass(frozen=True)
class Registration:
    """One flow ready to register: the body of ``POST /api/flows``, and the bundle to upload first (api storage)."""

    payload: dict[str, Any]
    bundle: Bundle | None


def prepare_registrations(
    found: list[tuple[Path, Flow[..., Any]]],
    storage: str | BaseStorage | None = None,
    extra_labels: list[str] | None = None,
) -> list[Registration]:
    """Build every flow's body, and for api storage the bundle of its folder (``baton.sdk.bundling``): flows of
    one folder share one bundle. Nothing is sent.

    Raises:
        FlowLoadError: a folder cannot be bundled (too big, the flow file itself left out...), or a flow cannot be
            described; see :func:`build_flow_payload` for the rest.
    """
    bundles: dict[Path, Bundle] = {}
    prepared: list[Registration] = []
    for path, flow in found:
        chosen = chosen_storage(flow, storage)
        if chosen.type != StorageType.API:
            prepared.append(Registration(build_flow_payload(flow, path, chosen, extra_labels), None))
            continue
        try:
            root = bundle_root(path)
            if root not in bundles:
                bundles[root] = bundle_directory(root)
        except (BundleError, OSError) as exc:
            raise FlowLoadError(f"{path}: cannot bundle its folder: {exc}") from None
        bundle, relative = bundles[root], flow_path_in_bundle(path, root)
        if relative not in bundle.files:
            raise FlowLoadError(
                f"{path}: the flow file itself is left out of its folder's bundle ({root}): see its "
                ".gitignore / .batonignore, and hidden files never travel"
            )
        payload = build_flow_payload(flow, path, chosen, extra_labels, bundle=(bundle.digest, relative))
        prepared.append(Registration(payload, bundle))
    return prepared


def register_prepared(client: Client, registrations: list[Registration]) -> list[FlowRead]:
    """Upload each bundle the server does not have yet (once), then register the flows in order."""
    sent: set[str] = set()
    for registration in registrations:
        bundle = registration.bundle
        if bundle is None or bundle.digest in sent:
            continue
        if not client.has_bundle(bundle.digest):
            client.upload_bundle(bundle.digest, bundle.data)
        sent.add(bundle.digest)
    return [client.register_flow(registration.payload) for registration in registrations]
