"""Flows registered by Prefect 1's client (issue 13): Baton flows of kind ``prefect1``, with Prefect 1's data beside.

The mapping (docs/design.md §11):

* A Prefect 1 flow's name is the Baton flow's name, and its versions are the Baton flow's versions. Baton names flows
  per tenant, Prefect 1 per project: a name is registered in one project only, and a Baton flow's name is not free
  for a Prefect 1 flow (nor the other way round).
* Prefect 1's version group is the name's: found from the flow's name in its project when the client names none,
  as Prefect Server 1 did. A new version archives the group's other versions.
* An ``idempotency_key`` equal to the one the group's latest registration gave returns that version (``prefect
  register`` sends the hash of the serialized flow, so unchanged code makes no new version).
* Tasks get an id each at registration (Prefect 1 serializes none); edges name tasks by slug and must name tasks of
  the flow.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.schemas.core import json_value_problem
from baton.server.database.orm import Flow, Prefect1Flow
from baton.server.models.errors import InvalidRequest, ObjectNotFound, StaleState
from baton.server.models.flows import PREFECT1_KIND, latest_version, lock_flow_name
from baton.server.models.projects import get_project

KIND = PREFECT1_KIND
# Baton's flow names (schemas.actions.NAME_FIELD): a Prefect 1 flow's name must be one.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
MAX_TASKS = 10_000
MAX_EDGES = 50_000
MAX_LABELS = 100
MAX_KEY_LENGTH = 200  # version_group_id, idempotency_key: the columns' width
MAX_DESCRIPTION_LENGTH = 10_000
_EDGES_UNKNOWN = "Edges could not be registered - some edges reference tasks that do not exist within this flow."


def _storable(what: str, value: Any) -> None:
    """Refuse what no database could store and serve back (NUL, lone surrogates, NaN, too deep: as REST does)."""
    problem = json_value_problem(value)
    if problem is not None:
        raise InvalidRequest(f"{what}: {problem}")


def checked_text(what: str, value: str | None, limit: int) -> str | None:
    """``value`` if it is text no longer than ``limit`` that both databases store (no NUL, no lone surrogate)."""
    if value is not None:
        if not isinstance(value, str):
            raise InvalidRequest(f"{what} must be a string")
        _storable(what, value)
        if len(value) > limit:
            raise InvalidRequest(f"{what} is at most {limit} characters")
    return value


def _checked(serialized: Any) -> dict[str, Any]:
    if not isinstance(serialized, dict):
        raise InvalidRequest("serialized_flow must be an object")
    _storable("serialized_flow", serialized)
    name = serialized.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"the flow's name {str(name)[:80]!r} is not a Baton flow name: 1 to 200 letters, digits, spaces, "
            "'_', '.' or '-', starting with a letter or digit"
        )
    for field, kind in (("tasks", list), ("edges", list), ("parameters", list)):
        if not isinstance(serialized.get(field) or [], kind):
            raise InvalidRequest(f"serialized_flow.{field} must be a list")
    for field in ("storage", "run_config", "environment"):
        if not isinstance(serialized.get(field) or {}, dict):
            raise InvalidRequest(f"serialized_flow.{field} must be an object")
    if len(serialized.get("tasks") or []) > MAX_TASKS:
        raise InvalidRequest(f"a flow has at most {MAX_TASKS} tasks")
    core_version = serialized.get("__version__")
    if core_version is not None and (not isinstance(core_version, str) or len(core_version) > 64):
        raise InvalidRequest("serialized_flow.__version__ must be a version string of at most 64 characters")
    return serialized


def _labels(serialized: dict[str, Any]) -> list[str]:
    labels = (serialized.get("run_config") or {}).get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        raise InvalidRequest("run_config.labels must be a list of non-empty strings")
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"a flow has at most {MAX_LABELS} labels")
    return sorted(set(labels))


def parameters_schema(serialized: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of the flow's Parameters (any JSON value; the required ones without default required): what
    Baton's run form and run creation check a run's parameters against."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in serialized.get("parameters") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise InvalidRequest("each of serialized_flow.parameters must be an object with a name")
        name = parameter["name"]
        properties[name] = {} if parameter.get("default") is None else {"default": parameter["default"]}
        if parameter.get("required"):
            required.append(name)
    return {"type": "object", "properties": properties, "required": sorted(required)}


def _with_task_ids(tasks: list[Any], known: set[str] | None = None) -> list[dict[str, Any]]:
    """``tasks`` not known by slug yet, each with an id of its own."""
    known = set() if known is None else known
    added: list[dict[str, Any]] = []
    for task in tasks:
        if not isinstance(task, dict) or not isinstance(task.get("slug"), str) or not task["slug"]:
            raise InvalidRequest("each serialized task must be an object with a slug")
        if task["slug"] in known:
            continue
        known.add(task["slug"])
        added.append({**task, "id": str(uuid.uuid4())})
    return added


def _edge_key(edge: dict[str, Any]) -> tuple[Any, ...]:
    ends = [edge.get("upstream_task"), edge.get("downstream_task")]
    return (*(end.get("slug") if isinstance(end, dict) else end for end in ends), edge.get("key"))


def _checked_edges(
    edges: list[Any], slugs: set[str], known: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``known`` and the ``edges`` not among them (an edge is its two tasks and its key): each joining tasks of the
    flow. A client that registers again with the same idempotency key sends the same edges again."""
    merged = list(known or [])
    seen = {_edge_key(edge) for edge in merged}
    for edge in edges:
        if not isinstance(edge, dict):
            raise InvalidRequest("each serialized edge must be an object")
        key = _edge_key(edge)
        if not all(isinstance(end, str) and end in slugs for end in key[:2]):
            raise InvalidRequest(_EDGES_UNKNOWN)
        if key not in seen:
            seen.add(key)
            merged.append(edge)
    if len(merged) > MAX_EDGES:
        raise InvalidRequest(f"a flow has at most {MAX_EDGES} edges")
    return merged


def _content_hash(serialized: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(serialized, sort_keys=True, default=str).encode()).hexdigest()


def register(
    session: Session,
    tenant_id: str,
    project_id: str,
    serialized: Any,
    *,
    version_group_id: str | None = None,
    idempotency_key: str | None = None,
    description: str | None = None,
) -> str:
    """Register a version of a Prefect 1 flow; returns its flow id (the existing one for a repeated key)."""
    serialized = _checked(serialized)
    checked_text("version_group_id", version_group_id, MAX_KEY_LENGTH)
    checked_text("idempotency_key", idempotency_key, MAX_KEY_LENGTH)
    checked_text("description", description, MAX_DESCRIPTION_LENGTH)
    name: str = serialized["name"]
    # One registration of a name at a time (with REST's), and the project kept until it commits: the checks below
    # read what the others committed.
    lock_flow_name(session, tenant_id, name)
    project = get_project(session, tenant_id, project_id, lock="share")
    latest = latest_version(session, tenant_id, name)
    group = session.get(Prefect1Flow, latest.id) if latest is not None and latest.kind == KIND else None
    if latest is not None and latest.kind != KIND:
        raise InvalidRequest(f"{name!r} is a Baton flow of this tenant: a Prefect 1 flow needs a name of its own")
    if group is not None and group.project_id != project.id:
        raise InvalidRequest(
            f"Baton names flows per tenant: {name!r} is registered in another project already; register it there "
            "or give this flow another name"
        )
    if group is not None and version_group_id and version_group_id != group.version_group_id:
        raise InvalidRequest(f"{name!r} belongs to version group {group.version_group_id}, not {version_group_id}")
    if group is None and version_group_id and _group_taken(session, tenant_id, version_group_id):
        raise InvalidRequest(f"version group {version_group_id} belongs to another flow")
    if group is not None and idempotency_key and group.idempotency_key == idempotency_key and not group.archived:
        return group.flow_id
    labels = _labels(serialized)
    schema = parameters_schema(serialized)
    tasks = _with_task_ids(serialized.get("tasks") or [])
    edges = _checked_edges(serialized.get("edges") or [], {task["slug"] for task in tasks})
    stored = {**serialized, "tasks": tasks, "edges": edges}
    group_id = group.version_group_id if group is not None else (version_group_id or str(uuid.uuid4()))
    flow_group_id = group.flow_group_id if group is not None else str(uuid.uuid4())
    for _attempt in range(3):
        latest = latest_version(session, tenant_id, name)
        flow = Flow(
            tenant_id=tenant_id,
            name=name,
            version=(latest.version + 1) if latest else 1,
            kind=KIND,
            entrypoint="",
            source=None,
            content_hash=_content_hash(stored),
            storage={},
            run_config={},
            labels=labels,
            parameters_schema=schema,
            tasks=[str(task.get("name") or task["slug"]) for task in tasks],
            description=description,
        )
        try:
            with session.begin_nested():
                session.add(flow)
        except IntegrityError:
            continue  # a concurrent registration of the name took this version: take the next one
        session.add(
            Prefect1Flow(
                flow_id=flow.id,
                tenant_id=tenant_id,
                project_id=project.id,
                version_group_id=group_id,
                flow_group_id=flow_group_id,
                core_version=str(serialized.get("__version__") or "") or None,
                archived=False,
                idempotency_key=idempotency_key,
                serialized_flow=stored,
            )
        )
        session.flush()
        session.execute(
            update(Prefect1Flow)
            .where(
                Prefect1Flow.tenant_id == tenant_id,
                Prefect1Flow.version_group_id == group_id,
                Prefect1Flow.flow_id != flow.id,
            )
            .values(archived=True)
        )
        return flow.id
    raise StaleState(f"could not register flow {name!r}: too many concurrent registrations; retry")


def _group_taken(session: Session, tenant_id: str, version_group_id: str) -> bool:
    taken = select(Prefect1Flow.flow_id).where(
        Prefect1Flow.tenant_id == tenant_id, Prefect1Flow.version_group_id == version_group_id
    )
    return session.scalar(taken.limit(1)) is not None


def get(session: Session, tenant_id: str, flow_id: str, *, for_update: bool = False) -> Prefect1Flow:
    query = select(Prefect1Flow).where(Prefect1Flow.tenant_id == tenant_id, Prefect1Flow.flow_id == flow_id)
    found = session.scalar(query.with_for_update() if for_update else query)
    if found is None:
        raise ObjectNotFound(f"flow {flow_id} not found")
    return found


def add_tasks(session: Session, tenant_id: str, flow_id: str, tasks: list[Any]) -> None:
    """Prefect 1's ``register_tasks``: tasks whose slugs the flow has not yet (others are left as they are)."""
    _storable("serialized_tasks", tasks)
    found = get(session, tenant_id, flow_id, for_update=True)  # batches of one flow may arrive side by side
    known = list(found.serialized_flow.get("tasks") or [])
    added = _with_task_ids(tasks, {task["slug"] for task in known})
    if len(known) + len(added) > MAX_TASKS:
        raise InvalidRequest(f"a flow has at most {MAX_TASKS} tasks")
    everything = known + added
    found.serialized_flow = {**found.serialized_flow, "tasks": everything}
    flow = session.get_one(Flow, flow_id)
    flow.tasks = [str(task.get("name") or task["slug"]) for task in everything]
    flow.content_hash = _content_hash(found.serialized_flow)


def add_edges(session: Session, tenant_id: str, flow_id: str, edges: list[Any]) -> None:
    """Prefect 1's ``register_edges``: edges between tasks the flow has (else the error Prefect Server gave)."""
    _storable("serialized_edges", edges)
    found = get(session, tenant_id, flow_id, for_update=True)
    slugs = {task["slug"] for task in found.serialized_flow.get("tasks") or []}
    known = list(found.serialized_flow.get("edges") or [])
    found.serialized_flow = {**found.serialized_flow, "edges": _checked_edges(edges, slugs, known)}
    session.get_one(Flow, flow_id).content_hash = _content_hash(found.serialized_flow)


def archive(session: Session, tenant_id: str, flow_id: str) -> None:
    get(session, tenant_id, flow_id).archived = True
