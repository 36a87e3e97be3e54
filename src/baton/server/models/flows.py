"""Flows and their versions."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, Text, and_, bindparam, cast, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from baton.schemas.actions import MAX_INT, FlowCreate
from baton.schemas.core import RunConfig, Storage, json_value_problem
from baton.schemas.responses import FlowRead
from baton.server.database.orm import Flow, FlowRun
from baton.server.models import bundles, cursors
from baton.server.models.errors import InvalidRequest, ObjectNotFound, StaleState
from baton.server.models.ids import checked_id

logger = logging.getLogger("baton.server")


_RUN_POLICY_FIELDS = ("retries", "retry_delay_seconds", "max_lateness_seconds")
_NAME_OF_FLOW = select(Flow.name).where(Flow.id == bindparam("id"))


def name_of_run_flow(session: Session, run: FlowRun) -> str | None:
    """The name of ``run``'s flow: the run's own copy (migration 0013; no query), else read from its flow (runs
    written before that copy existed). Flows are never renamed, so both agree."""
    return run.flow_name or session.scalar(_NAME_OF_FLOW, {"id": run.flow_id})


def _content_hash(payload: FlowCreate) -> str:
    # A timeout changes how runs end, so it is part of the content; left out when unset, so that flows registered
    # before the field existed keep their hash (re-registering them unchanged makes no new version). A concurrency
    # limit likewise: changing it makes a new version, whose value then rules all runs of the name.
    optional = ("timeout_seconds", "max_concurrent_runs")
    unset = {name for name in optional if getattr(payload, name) is None}
    # Run policies likewise (migration 0005): only when set do they change the content.
    unset |= {name for name in _RUN_POLICY_FIELDS if getattr(payload, name) in (None, 0)}
    exclude: dict[str, Any] = dict.fromkeys(unset, True)
    # A bundle (migration 0011) likewise: a flow without one keeps the hash it had.
    if payload.storage.bundle is None:
        exclude["storage"] = {"bundle"}
    content = payload.model_dump(mode="json", exclude=exclude)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _versions(tenant_id: str, name: str) -> Select[Flow]:
    return select(Flow).where(Flow.tenant_id == tenant_id, Flow.name == name)


def _latest(tenant_id: str, name: str) -> Select[Flow]:
    return _versions(tenant_id, name).order_by(Flow.version.desc()).limit(1)


# Flows' kinds (migration 0016): Baton's own, run by its agents; Prefect 1's, registered through the GraphQL API and
# run by Prefect 1's agents (models.prefect1_flows).
BATON_KIND = "baton"
PREFECT1_KIND = "prefect1"


def lock_flow_name(session: Session, tenant_id: str, name: str) -> None:
    """Registrations of one flow name wait for each other until commit (PostgreSQL: a transaction advisory lock on
    the name; SQLite's writers are one at a time already), so that what one checks is what the other committed."""
    if session.get_bind().dialect.name == "postgresql":
        key = f"flow name\n{tenant_id}\n{name}"
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


def latest_version(session: Session, tenant_id: str, name: str) -> Flow | None:
    return session.scalar(_latest(tenant_id, name))


def register_flow(session: Session, tenant_id: str, payload: FlowCreate) -> tuple[Flow, bool]:
    """Store a new version unless the latest one has the same content. Returns (flow, created).

    Raises:
        InvalidRequest: the flow names a bundle the tenant has not uploaded (422).
        StaleState: too many concurrent registrations of the name (409).
    """
    bundle = payload.storage.bundle
    if bundle is not None and not bundles.exists(session, tenant_id, bundle):
        raise InvalidRequest(f"bundle {bundle} was not uploaded: PUT /api/bundles/{bundle} first")
    digest = _content_hash(payload)
    lock_flow_name(session, tenant_id, payload.name)
    latest = latest_version(session, tenant_id, payload.name)
    if latest is not None and latest.kind != BATON_KIND:
        raise InvalidRequest(
            f"{payload.name!r} is a Prefect 1 flow of this tenant: a Baton flow needs a name of its own"
        )
    if bundle is not None and (latest is None or latest.content_hash != digest):
        _check_source_in_bundle(session, tenant_id, payload)
    for _attempt in range(3):
        latest = latest_version(session, tenant_id, payload.name)
        if latest is not None and latest.content_hash == digest:
            return latest, False
        flow = Flow(
            tenant_id=tenant_id,
            name=payload.name,
            version=(latest.version + 1) if latest else 1,
            entrypoint=payload.entrypoint,
            source=payload.source,
            source_filename=payload.source_filename,
            content_hash=digest,
            storage=payload.storage.model_dump(mode="json"),
            run_config=payload.run_config.model_dump(mode="json"),
            labels=payload.labels,
            parameters_schema=payload.parameters_schema,
            tasks=payload.tasks,
            schedule=payload.schedule.model_dump(mode="json") if payload.schedule is not None else None,
            description=payload.description,
            timeout_seconds=payload.timeout_seconds,
            retries=payload.retries,
            retry_delay_seconds=payload.retry_delay_seconds,
            max_lateness_seconds=payload.max_lateness_seconds,
            max_concurrent_runs=payload.max_concurrent_runs,
        )
        try:
            with session.begin_nested():
                session.add(flow)
        except IntegrityError:
            continue  # someone registered the same name at the same moment: take the next version
        return flow, True
    raise StaleState(f"could not register flow {payload.name!r}: too many concurrent registrations; retry")


def _check_source_in_bundle(session: Session, tenant_id: str, payload: FlowCreate) -> None:
    """The flow's ``source`` (what readers are shown) must be the bundle's file at ``storage.path`` (what runs).

    Raises:
        InvalidRequest: the bundle has no such file, or it is not the source sent (422).
    """
    assert payload.storage.bundle is not None and payload.storage.path is not None
    found = bundles.file_digest(session, tenant_id, payload.storage.bundle, payload.storage.path)
    if found is None:
        raise InvalidRequest(f"bundle {payload.storage.bundle} has no file {payload.storage.path!r}")
    sent = (payload.source or "").encode("utf-8", "surrogatepass")
    if hashlib.sha256(sent).hexdigest() != found:
        raise InvalidRequest(f"the source sent is not the file {payload.storage.path!r} of the bundle")


def get_flow(session: Session, tenant_id: str, flow_id: str, *, source: bool = True) -> Flow:
    """The tenant's flow; ``source=False`` leaves its code unread (a run's creation never needs it)."""
    flow_id = checked_id("flow", flow_id)
    query = select(Flow).where(Flow.tenant_id == tenant_id, Flow.id == flow_id)
    flow = session.scalar(query if source else query.options(defer(Flow.source)))
    if flow is None:
        raise ObjectNotFound(f"flow {flow_id} not found")
    return flow


def find_flow(session: Session, tenant_id: str, name: str, version: int | None, *, source: bool = True) -> Flow:
    """The flow of that name, at ``version`` or its latest; ``source`` as in :func:`get_flow`."""
    query = _latest(tenant_id, name) if version is None else _versions(tenant_id, name).where(Flow.version == version)
    flow = session.scalar(query if source else query.options(defer(Flow.source)))
    if flow is None:
        suffix = f" version {version}" if version is not None else ""
        raise ObjectNotFound(f"flow {name!r}{suffix} not found: register it first with `baton register`")
    return flow


@dataclass
class FlowPage:
    flows: list[Flow]
    next_cursor: str | None  # where the next page starts; None when this one is the last


# Every answer item carries this much besides its JSON and text columns: the budget's estimate.
_ITEM_OVERHEAD = 600


def _length(column: Any) -> Any:
    return func.coalesce(func.length(cast(column, Text)), 0)


def _encode_cursor(flow: Flow) -> str:
    return cursors.encode(flow.name, flow.version)


def _decode_cursor(cursor: str) -> tuple[str, int]:
    name, version = cursors.decode(cursor, str, int)
    if not 1 <= version <= MAX_INT or len(name) > 200:  # 200: the width of the name column
        raise cursors.invalid(cursor)
    return name, version


def list_flows(
    session: Session,
    tenant_id: str,
    name: str | None = None,
    all_versions: bool = False,
    cursor: str | None = None,
    max_bytes: int = 4 * 1024 * 1024,
) -> FlowPage:
    """Flows by name, newest version first, until their estimated size passes ``max_bytes`` (at least one).

    The sizes are read first (one query of lengths), then only the rows that fit.
    """
    if name and "\x00" in name:
        return FlowPage([], None)  # no flow name has NUL (NAME_FIELD), and PostgreSQL refuses to compare with one
    size = (
        _length(Flow.run_config)
        + _length(Flow.parameters_schema)
        + _length(Flow.tasks)
        + _length(Flow.schedule)
        + func.coalesce(func.length(Flow.description), 0)
        + _ITEM_OVERHEAD
    )
    stmt = select(Flow.id, size).where(Flow.tenant_id == tenant_id)
    if name:
        stmt = stmt.where(Flow.name == name)
    if not all_versions:
        newest = (
            select(Flow.name, func.max(Flow.version).label("version"))
            .where(Flow.tenant_id == tenant_id)
            .group_by(Flow.name)
            .subquery()
        )
        stmt = stmt.join(newest, (newest.c.name == Flow.name) & (newest.c.version == Flow.version))
    if cursor is not None:
        after_name, after_version = _decode_cursor(cursor)
        stmt = stmt.where(or_(Flow.name > after_name, and_(Flow.name == after_name, Flow.version < after_version)))
    chosen: list[str] = []
    total = 0
    more = False
    for flow_id, flow_size in session.execute(stmt.order_by(Flow.name, Flow.version.desc())):
        if chosen and total + int(flow_size) > max_bytes:
            more = True
            break
        chosen.append(flow_id)
        total += int(flow_size)
    by_id = {
        flow.id: flow for flow in session.scalars(select(Flow).where(Flow.id.in_(chosen)).options(defer(Flow.source)))
    }
    found = [by_id[flow_id] for flow_id in chosen if flow_id in by_id]
    return FlowPage(found, _encode_cursor(found[-1]) if more and found else None)


def stored_json_problems(flow: Flow) -> dict[str, str]:
    """The flow's stored JSON fields that cannot be served as they are, with why (see ``flow_runs``'s)."""
    return _checked(flow)[0]


def _checked(flow: Flow) -> tuple[dict[str, str], Storage, RunConfig]:
    """The flow's stored-field problems, and its storage and run config as served (empty when they have one):
    each validated once."""
    problems: dict[str, str] = {}
    try:
        storage = Storage.model_validate(flow.storage)
    except ValidationError as exc:
        problems["storage"] = str(exc.errors(include_url=False)[0]["msg"])
        storage = Storage()
    try:
        run_config = RunConfig.model_validate(flow.run_config)
    except ValidationError as exc:
        problems["run_config"] = str(exc.errors(include_url=False)[0]["msg"])
        run_config = RunConfig()
    for name, value in (("parameters_schema", flow.parameters_schema), ("schedule", flow.schedule)):
        problem = json_value_problem(value)
        if problem is not None:
            problems[name] = problem
    stored: Any = flow.parameters_schema  # typed dict, but a row written by hand may hold any JSON
    if not isinstance(stored, dict):
        problems["parameters_schema"] = "not a JSON object"
    return problems, storage, run_config


def to_read(flow: Flow, include_source: bool = False) -> FlowRead:
    """The flow's API form; a stored field that cannot be served is served empty, and logged."""
    problems, storage, run_config = _checked(flow)
    if problems:
        logger.warning("flow %s: stored fields cannot be served, served empty: %s", flow.id, problems)
    return FlowRead(
        id=flow.id,
        name=flow.name,
        version=flow.version,
        entrypoint=flow.entrypoint,
        storage=storage,
        run_config=run_config,
        labels=flow.labels,
        parameters_schema={} if "parameters_schema" in problems else flow.parameters_schema,
        tasks=flow.tasks,
        schedule=None if "schedule" in problems else flow.schedule,
        description=flow.description,
        source_filename=flow.source_filename,
        created=flow.created,
        timeout_seconds=flow.timeout_seconds,
        retries=flow.retries,
        retry_delay_seconds=flow.retry_delay_seconds,
        max_lateness_seconds=flow.max_lateness_seconds,
        max_concurrent_runs=flow.max_concurrent_runs,
        source=flow.source if include_source else None,
        kind=flow.kind,
    )


@dataclass(frozen=True)
class LastRun:
    """What the flows list shows of a flow's newest run."""

    id: str
    state: str
    created: datetime


def newest_runs_by_name(session: Session, tenant_id: str, names: list[str]) -> dict[str, LastRun]:
    """The newest run of each flow name, in one query: each version's newest run is a probe of
    ``ix_flow_runs_flow_created`` from its newest end (never a scan of the tenant's runs); the newest of the
    versions is picked here."""
    if not names:
        return {}

    def newest(column: Any) -> Any:
        # The same order in each: the three columns come from one run, also when two share a creation time.
        return (
            select(column)
            .where(FlowRun.flow_id == Flow.id)
            .order_by(FlowRun.created.desc(), FlowRun.id.desc())
            .limit(1)
            .correlate(Flow)
            .scalar_subquery()
        )

    rows = session.execute(
        select(Flow.name, newest(FlowRun.created), newest(FlowRun.id), newest(FlowRun.state)).where(
            Flow.tenant_id == tenant_id, Flow.name.in_(names)
        )
    ).all()
    last: dict[str, LastRun] = {}
    for name, created, run_id, state in rows:
        if run_id is not None and (name not in last or (created, run_id) > (last[name].created, last[name].id)):
            last[name] = LastRun(run_id, state, created)
    return last
