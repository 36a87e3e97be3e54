"""Flows: the list (last run, next scheduled run), a flow's page (versions, source, schedule with pause and
resume, recent runs) and its Run form, which creates a run exactly as ``POST /api/flow_runs`` does."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.schemas.actions import IDEMPOTENCY_KEY_PATTERN, FlowRunCreate
from baton.server import shaping
from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import flow_runs, flows, schedule_views
from baton.server.models.errors import IdempotencyConflict, InvalidRequest, ObjectNotFound
from baton.server.models.schedules import schedule_policy
from baton.server.ui import run_form
from baton.server.ui.routing import UiRoute
from baton.server.ui.web import (
    CheckedForm,
    Viewer,
    ViewerDep,
    factory_of,
    reader_of,
    redirect,
    render,
    require,
    validation_message,
)

router = APIRouter(route_class=UiRoute)
RECENT_RUNS = 20
VERSIONS_SHOWN = 20
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@router.get("/flows", include_in_schema=False)
def flows_list(request: Request, viewer: ViewerDep) -> Response:
    require(viewer, Action.FLOW_LIST)
    tenant_id = viewer.principal.tenant_id
    budget = request.app.state.settings.server.max_list_bytes
    with transaction(reader_of(request)) as session:
        page = flows.list_flows(session, tenant_id, max_bytes=budget)
        rows = shaping.flows(viewer.principal, page.flows)
        last = flows.newest_runs_by_name(session, tenant_id, [flow.name for flow in rows])
        schedules = {}
        if viewer.can(Action.SCHEDULE_READ):
            schedules = {s.flow_name: s for s in schedule_views.list_schedules(session, tenant_id, utcnow())}
    return render(request, "flows.html", viewer, flows=rows, last=last, schedules=schedules, more=page.next_cursor)


def _flow_context(session: Session, viewer: Viewer, name: str) -> dict[str, Any]:
    tenant_id = viewer.principal.tenant_id
    newest = flows.find_flow(session, tenant_id, name, None)
    flow = shaping.flow(viewer.principal, newest, include_source=True)
    versions = flows.list_flows(session, tenant_id, name=name, all_versions=True, max_bytes=256 * 1024).flows
    where = flow_runs.RunFilter(flow_name=name)
    recent = flow_runs.list_flow_runs(session, tenant_id, where, limit=RECENT_RUNS, max_bytes=512 * 1024).runs
    schedule = None
    if flow.schedule is not None and viewer.can(Action.SCHEDULE_READ):
        schedule = schedule_views.get_schedule(session, tenant_id, name, utcnow())
    return {
        "flow": flow,
        "versions": shaping.flows(viewer.principal, versions[:VERSIONS_SHOWN]),
        "runs": shaping.flow_runs(session, viewer.principal, recent, flow_runs.HEAVY_FIELDS),
        "schedule": schedule,
        "fields": run_form.fields(flow.parameters_schema),
        "idempotency_key": str(uuid.uuid4()),
    }


def _flow_name(name: str) -> str:
    if "\x00" in name or len(name) > 200:
        raise ObjectNotFound(f"flow {name[:200]!r} not found")
    return name


@router.get("/flows/{name}", include_in_schema=False)
def flow_page(request: Request, name: str, viewer: ViewerDep) -> Response:
    require(viewer, Action.FLOW_READ)
    with transaction(reader_of(request)) as session:
        context = _flow_context(session, viewer, _flow_name(name))
    return render(request, "flow.html", viewer, form={}, problems={}, error=None, **context)


def _create(request: Request, viewer: Viewer, payload: FlowRunCreate, key: str | None) -> str:
    with transaction(factory_of(request)) as session:
        limit = request.app.state.settings.server.max_task_runs_per_run
        run, _new = flow_runs.create_flow_run_once(
            session, viewer.principal.tenant_id, payload, key, max_task_runs=limit
        )
        return run.id


@router.post("/flows/{name}/runs", include_in_schema=False)
def create_run(request: Request, name: str, viewer: ViewerDep, form: CheckedForm) -> Response:
    require(viewer, Action.FLOW_RUN_CREATE)
    name = _flow_name(name)
    with transaction(reader_of(request)) as session:
        context = _flow_context(session, viewer, name)
    parameters, problems = run_form.read(context["fields"], form)
    labels = [label.strip() for label in form.get("labels", "").split(",") if label.strip()] or None
    key = form.get("idempotency_key", "")
    error = None
    if key and not _IDEMPOTENCY_KEY.match(key):  # as REST: no key is no idempotency; a malformed one is refused
        error = "this form is not one this page made: reload the page and send it again"
    elif not problems:
        try:
            payload = FlowRunCreate(flow_name=name, parameters=parameters, labels=labels)
        except ValidationError as exc:
            error = validation_message(exc)
        else:
            try:
                run_id = _create(request, viewer, payload, key or None)
            except IntegrityError:  # as REST: the same form, sent at the same moment, won; this finds its run
                run_id = _create(request, viewer, payload, key or None)
            except InvalidRequest as exc:
                error = str(exc)
            except IdempotencyConflict:
                error = "this form already started a run: reload the page to start another"
            else:
                request.app.state.notifier.notify_threadsafe(viewer.principal.tenant_id)
                return redirect(f"/runs/{run_id}", request)
    if _IDEMPOTENCY_KEY.match(key):
        context["idempotency_key"] = key
    return render(request, "flow.html", viewer, 422, form=form, problems=problems, error=error, **context)


@router.post("/flows/{name}/schedule/{action}", include_in_schema=False)
def pause_or_resume(request: Request, name: str, action: str, viewer: ViewerDep, form: CheckedForm) -> Response:
    require(viewer, Action.SCHEDULE_PAUSE)
    if action not in ("pause", "resume"):
        raise ObjectNotFound(f"no schedule action {action[:40]!r}: pause or resume")
    name = _flow_name(name)
    with transaction(factory_of(request)) as session:
        if action == "pause":
            schedule_views.pause(session, viewer.principal.tenant_id, name, utcnow())
        else:
            policy = schedule_policy(request.app.state.settings.server)
            schedule_views.resume(session, viewer.principal.tenant_id, name, utcnow(), policy)
    return redirect(f"/flows/{quote(name, safe='')}", request)
