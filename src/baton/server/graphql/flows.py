"""Flows over GraphQL: Prefect 1's registration (``create_flow_from_compressed_string``, ``create_flow``,
``register_tasks``, ``register_edges``) and its ``flow`` queries. The mapping onto Baton's flows:
``models.prefect1_flows``."""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

from ariadne import MutationType, QueryType, ScalarType
from fastapi import HTTPException
from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, ValueNode, value_from_ast_untyped
from sqlalchemy import Select, func, select
from sqlalchemy.orm import defer

from baton.server import shaping
from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.database.orm import Flow, Prefect1Flow, Project
from baton.server.graphql.core import Info, ListArguments, context_of, paged, require
from baton.server.graphql.projects import COLUMNS as PROJECT_COLUMNS
from baton.server.graphql.projects import row as project_row
from baton.server.graphql.where import Columns, Related
from baton.server.json_body import parse_json_body
from baton.server.models import prefect1_flows
from baton.server.models.errors import InvalidRequest
from baton.server.models.tenants import Principal

query = QueryType()
mutation = MutationType()

# A compressed serialized flow may inflate to this much JSON at most (a gzip bomb is refused, not inflated).
MAX_SERIALIZED_BYTES = 16 * 1024 * 1024


def _any_json(value: Any) -> Any:
    return value


def _json_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> Any:
    return value_from_ast_untyped(node, variables)


jsonb = ScalarType("jsonb", serializer=_any_json, value_parser=_any_json, literal_parser=_json_literal)
json_scalar = ScalarType("JSON", serializer=_any_json, value_parser=_any_json, literal_parser=_json_literal)

COLUMNS: Columns = {
    "id": Flow.id,
    "name": Flow.name,
    "version": Flow.version,
    "created": Flow.created,
    "version_group_id": Prefect1Flow.version_group_id,
    "flow_group_id": Prefect1Flow.flow_group_id,
    "project_id": Prefect1Flow.project_id,
    "core_version": Prefect1Flow.core_version,
    "archived": Prefect1Flow.archived,
    "project": Related(PROJECT_COLUMNS, lambda inner: Prefect1Flow.project_id.in_(select(Project.id).where(inner))),
}


# The fields read from the serialized flow: it is loaded only when one of them is asked for (``prefect get flows``
# asks for none, and a flow's JSON may be megabytes).
_FROM_SERIALIZED = frozenset({"storage", "run_config", "environment", "parameters", "schedule", "serialized_flow"})


def _asked(info: Info) -> set[str]:
    """The names of the fields selected under this field (fragments included)."""
    names: set[str] = set()
    pending = [node.selection_set for node in info.field_nodes if node.selection_set is not None]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                names.add(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                pending.append(info.fragments[selection.name.value].selection_set)
    return names


def _rows(statement: Select[Flow, Prefect1Flow, Project], info: Info) -> list[dict[str, Any]]:
    with_json = bool(_asked(info) & _FROM_SERIALIZED)
    if not with_json:
        statement = statement.options(defer(Prefect1Flow.serialized_flow))
    principal = context_of(info).principal
    with context_of(info).read_sessions() as session:
        found = session.execute(statement).all()
        return [_row(principal, flow, data, project, with_json) for flow, data, project in found]


def _row(principal: Principal, flow: Flow, data: Prefect1Flow, project: Project, with_json: bool) -> dict[str, Any]:
    serialized = data.serialized_flow if with_json else {}
    if "run_config" in serialized:  # its env values are secrets to a read key, as in Baton's run configs
        serialized = {**serialized, "run_config": shaping.prefect1_run_config(principal, serialized["run_config"])}
    return {
        "id": flow.id,
        "tenant_id": flow.tenant_id,
        "project_id": data.project_id,
        "project": project_row(project),
        "name": flow.name,
        "version": flow.version,
        "version_group_id": data.version_group_id,
        "flow_group_id": data.flow_group_id,
        "core_version": data.core_version,
        "archived": data.archived,
        "created": flow.created,
        "description": flow.description,
        "storage": serialized.get("storage"),
        "run_config": serialized.get("run_config"),
        "environment": serialized.get("environment"),
        "parameters": serialized.get("parameters") or [],
        "schedule": serialized.get("schedule"),
        "is_schedule_active": False,  # Baton does not run Prefect 1 schedules (yet)
        "serialized_flow": serialized,
        "settings": {},
        "flow_group": {
            "id": data.flow_group_id,
            "name": flow.name,
            "labels": None,
            "settings": {},
            "run_config": None,
            "default_parameters": {},
        },
    }


def _joined(tenant_id: str) -> Select[Flow, Prefect1Flow, Project]:
    return (
        select(Flow, Prefect1Flow, Project)
        .join(Prefect1Flow, Prefect1Flow.flow_id == Flow.id)
        .join(Project, Project.id == Prefect1Flow.project_id)
        .where(Flow.tenant_id == tenant_id, Flow.kind == prefect1_flows.KIND)
    )


@query.field("flow")
def _flows(_: None, info: Info, distinct_on: list[str] | None = None, **arguments: Any) -> list[dict[str, Any]]:
    principal = require(info, Action.FLOW_LIST)
    listing = ListArguments.of(arguments, COLUMNS, Flow.id)
    ordering = listing.ordering
    statement = _joined(principal.tenant_id).where(listing.condition)
    if distinct_on:
        # Hasura's distinct_on (PostgreSQL's DISTINCT ON, portably): the first row of each group in ``order_by``.
        partition = [column for name in distinct_on if not isinstance(column := COLUMNS[name], Related)]
        ranked = (
            statement.with_only_columns(
                Flow.id.label("flow_id"),
                func.row_number().over(partition_by=partition, order_by=ordering).label("rank"),
            )
        ).subquery()
        statement = _joined(principal.tenant_id).join(ranked, ranked.c.flow_id == Flow.id).where(ranked.c.rank == 1)
    return paged(_rows(statement.order_by(*ordering).limit(listing.rows).offset(listing.skip), info))


def matching_ids(condition: Any) -> Select[str]:
    """The ids of the Prefect 1 flow versions ``condition`` (over :data:`COLUMNS`) matches: a relationship filter."""
    return (
        select(Flow.id)
        .join(Prefect1Flow, Prefect1Flow.flow_id == Flow.id)
        .join(Project, Project.id == Prefect1Flow.project_id)
        .where(condition)
    )


def by_id(info: Info, tenant_id: str, flow_id: str) -> dict[str, Any] | None:
    """A flow version as the ``flow`` field under ``info`` asks for it (a run's flow)."""
    found = _rows(_joined(tenant_id).where(Flow.id == flow_id), info)
    return found[0] if found else None


@query.field("flow_by_pk")
def _flow_by_pk(_: None, info: Info, id: str) -> dict[str, Any] | None:
    principal = require(info, Action.FLOW_LIST)
    found = _rows(_joined(principal.tenant_id).where(Flow.id == id), info)
    return found[0] if found else None


# --- registration ----------------------------------------------------------------------------------------------


def _decompressed(text: str) -> Any:
    """Prefect 1's ``compress``: base64 of gzipped JSON. Inflated at most :data:`MAX_SERIALIZED_BYTES`."""
    try:
        packed = base64.b64decode(text, validate=True)
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip
        raw = inflater.decompress(packed, MAX_SERIALIZED_BYTES)
        if inflater.unconsumed_tail:
            raise InvalidRequest(f"the serialized flow inflates past {MAX_SERIALIZED_BYTES} bytes")
        return parse_json_body(raw)
    except (binascii.Error, zlib.error, ValueError, HTTPException) as exc:
        raise InvalidRequest("Unable to decompress serialized flow") from exc


def _create(info: Info, data: dict[str, Any], serialized: Any) -> dict[str, Any]:
    principal = require(info, Action.FLOW_REGISTER)
    with transaction(context_of(info).sessions) as session:
        flow_id = prefect1_flows.register(
            session,
            principal.tenant_id,
            data["project_id"],
            serialized,
            version_group_id=data.get("version_group_id"),
            idempotency_key=data.get("idempotency_key"),
            description=data.get("description"),
        )
    return {"id": flow_id}


@mutation.field("create_flow_from_compressed_string")
def _create_from_compressed(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    require(info, Action.FLOW_REGISTER)  # before inflating anything
    return _create(info, input, _decompressed(input["serialized_flow"]))


@mutation.field("create_flow")
def _create_flow(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    return _create(info, input, input["serialized_flow"])


@mutation.field("register_tasks")
def _register_tasks(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_REGISTER)
    with transaction(context_of(info).sessions) as session:
        prefect1_flows.add_tasks(session, principal.tenant_id, input["flow_id"], input.get("serialized_tasks") or [])
    return {"success": True, "error": None}


@mutation.field("register_edges")
def _register_edges(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_REGISTER)
    with transaction(context_of(info).sessions) as session:
        prefect1_flows.add_edges(session, principal.tenant_id, input["flow_id"], input.get("serialized_edges") or [])
    return {"success": True, "error": None}


@mutation.field("set_schedule_active")
def _set_schedule_active(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_REGISTER)
    with context_of(info).read_sessions() as session:
        found = prefect1_flows.get(session, principal.tenant_id, input["flow_id"])
    if found.serialized_flow.get("schedule") is None:
        return {"success": True, "error": None}  # nothing to schedule
    return {"success": False, "error": "Baton does not run Prefect 1 schedules yet: the flow's schedule is inactive"}


@mutation.field("set_schedule_inactive")
def _set_schedule_inactive(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_REGISTER)
    with context_of(info).read_sessions() as session:
        prefect1_flows.get(session, principal.tenant_id, input["flow_id"])
    return {"success": True, "error": None}


@mutation.field("archive_flow")
def _archive_flow(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_REGISTER)
    with transaction(context_of(info).sessions) as session:
        prefect1_flows.archive(session, principal.tenant_id, input["flow_id"])
    return {"success": True, "error": None}
