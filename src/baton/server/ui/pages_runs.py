"""Runs: the list (filtered, paged, refreshed live by htmx), a run's page and its task runs, Cancel and Retry.

Every read and write goes through the REST API's model functions and ``shaping`` with the session's principal,
and every action is checked with ``access.allows`` first: a page can do nothing its key could not do over REST.
Pages read in read-only transactions (``web.reader_of``); writes take the write factory.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.schemas.actions import IDEMPOTENCY_KEY_PATTERN
from baton.schemas.responses import LogRead
from baton.schemas.states import FINAL_STATES, StateName
from baton.server import shaping
from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import agents, cursors, flow_runs, logs, pages, reruns, state_changes, task_runs
from baton.server.models.reruns import RETRIABLE_STATES
from baton.server.models.tenants import hash_secret
from baton.server.ui import gantt, task_table
from baton.server.ui.routing import UiRoute
from baton.server.ui.web import (
    CheckedForm,
    Viewer,
    ViewerDep,
    factory_of,
    page_url,
    reader_of,
    redirect,
    render,
    require,
)

router = APIRouter(route_class=UiRoute)
PAGE_SIZE = 50
# The list's time filter: label, and how far back.
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
# The lines a run's page shows at once; the log stream sends the rest.
LOG_PAGE = 1000
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def byte_budget(request: Request) -> int:
    """What one page may load of a list, as REST: the server's ``max_list_bytes``."""
    budget: int = request.app.state.settings.server.max_list_bytes
    return budget


def read_log_lines(
    session: Session, request: Request, viewer: Viewer, run_id: str, after: int, limit: int
) -> list[LogRead]:
    """The run's lines with an id above ``after``, oldest first: at most ``limit``, and no more than the server's
    byte budget (as REST's ``GET .../logs``); nothing when the key may not read logs."""
    if not viewer.can(Action.LOGS_READ):
        return []
    tenant_id = viewer.principal.tenant_id
    fitting = pages.lines_within(session, tenant_id, run_id, after, limit, byte_budget(request))
    return [shaping.log(row) for row in logs.read_logs(session, tenant_id, run_id, after, fitting)]


def _filters(request: Request) -> tuple[dict[str, str], list[str]]:
    """The list's filters from the query string, and what is wrong with them (shown above the list)."""
    query = request.query_params
    chosen = {name: query.get(name, "").strip()[:200] for name in ("state", "flow", "label", "window")}
    problems = []
    if chosen["state"] and chosen["state"] not in {state.value for state in StateName}:
        problems.append(f"unknown state {chosen['state']!r}")
        chosen["state"] = ""
    if chosen["window"] and chosen["window"] not in WINDOWS:
        problems.append(f"unknown time window {chosen['window']!r}: choose one of {', '.join(WINDOWS)}")
        chosen["window"] = ""
    return chosen, problems


def _runs_page(session: Session, viewer: Viewer, request: Request, chosen: dict[str, str]) -> dict[str, Any]:
    window = WINDOWS.get(chosen["window"])
    where = flow_runs.RunFilter(
        state=chosen["state"] or None,
        flow_name=chosen["flow"] or None,
        label=chosen["label"] or None,
        created_after=utcnow() - window if window else None,
    )
    cursor = request.query_params.get("cursor") or None
    page = flow_runs.list_flow_runs(
        session, viewer.principal.tenant_id, where, limit=PAGE_SIZE, cursor=cursor, max_bytes=byte_budget(request)
    )
    runs = shaping.flow_runs(session, viewer.principal, page.runs, flow_runs.HEAVY_FIELDS)
    next_url = page_url("/runs", **chosen, cursor=page.next_cursor) if page.next_cursor else None
    return {"runs": runs, "next_url": next_url, "first_page": cursor is None}


@router.get("/runs", include_in_schema=False)
def runs_list(request: Request, viewer: ViewerDep) -> Response:
    require(viewer, Action.FLOW_RUN_LIST)
    chosen, problems = _filters(request)
    with transaction(reader_of(request)) as session:
        context = _runs_page(session, viewer, request, chosen)
    fragment = request.headers.get("hx-request") == "true" and request.query_params.get("fragment") == "rows"
    template = "_runs_table.html" if fragment else "runs.html"
    live_url = page_url("/runs", **chosen, fragment="rows")
    return render(
        request,
        template,
        viewer,
        filters=chosen,
        problems=problems,
        states=[state.value for state in StateName],
        windows=list(WINDOWS),
        live_url=live_url,
        **context,
    )


def _run_context(session: Session, viewer: Viewer, request: Request, run_id: str) -> dict[str, Any]:
    principal = viewer.principal
    row = flow_runs.get_flow_run(session, principal.tenant_id, run_id)
    run = shaping.flow_run(session, principal, row)
    task_page = pages.task_runs_page(session, principal.tenant_id, run_id, None, byte_budget(request))
    tasks = shaping.task_runs(task_page.rows)
    # One page of task runs (1,000 at most): the table says how many it leaves out, counted only when it does.
    cut = task_page.next_cursor is not None
    total = task_runs.count_task_runs(session, principal.tenant_id, run_id) if cut else len(tasks)
    bars = [gantt.TaskBar(t.task_name, t.state, t.start_time, t.end_time, t.attempt) for t in tasks]
    server = request.app.state.settings.server
    explanation = None
    if run.state not in FINAL_STATES and run.state != StateName.RUNNING and viewer.can(Action.FLOW_RUN_EXPLAIN):
        explanation = agents.explain_run(
            session, principal.tenant_id, run_id, server.agent_stale_seconds, server.late_after_seconds
        )
    return {
        "run": run,
        "tasks": tasks,
        "table": task_table.build(tasks, total),
        "tasks_next": page_url(f"/runs/{run_id}/tasks", cursor=task_page.next_cursor) if cut else None,
        # A map of 1,000 and a task or two more is cut, and the chart says so.
        "gantt": gantt.gantt(bars, now=utcnow(), incomplete=cut),
        "explanation": explanation,
        "final": run.state in FINAL_STATES,
        "can_cancel": viewer.can(Action.FLOW_RUN_CANCEL) and run.state not in FINAL_STATES,
        "can_retry": viewer.can(Action.FLOW_RUN_RETRY) and run.state in RETRIABLE_STATES,
        # A fresh key each time the page is drawn: a double click retries once, a later click retries again.
        "retry_key": str(uuid.uuid4()),
    }


@router.get("/runs/{run_id}", include_in_schema=False)
def run_page(request: Request, run_id: str, viewer: ViewerDep) -> Response:
    require(viewer, Action.FLOW_RUN_READ)
    fragment = request.headers.get("hx-request") == "true" and request.query_params.get("fragment") == "live"
    with transaction(reader_of(request)) as session:
        context = _run_context(session, viewer, request, run_id)
        lines = [] if fragment else read_log_lines(session, request, viewer, run_id, 0, LOG_PAGE)
        after = lines[-1].id if lines else 0
        # The page may not hold every line (its size or the byte budget): the log stream then sends the rest.
        more = bool(lines) and bool(logs.read_logs(session, viewer.principal.tenant_id, run_id, after, 1))
    return render(
        request,
        "_run_live.html" if fragment else "run.html",
        viewer,
        logs=lines,
        logs_after=after,
        logs_complete=context["final"] and not more,
        **context,
    )


@router.get("/runs/{run_id}/tasks", include_in_schema=False)
def run_task_runs(request: Request, run_id: str, viewer: ViewerDep) -> Response:
    """Every task run of a run, oldest first, a page at a time (as REST's ``GET .../task_runs``): where the run
    page's table sends for what it leaves out. Not grouped, not live: the list to read to the end."""
    require(viewer, Action.FLOW_RUN_READ)
    require(viewer, Action.TASK_RUN_LIST)
    cursor = request.query_params.get("cursor") or None
    first = cursors.offset(cursor) if cursor else 0  # a junk cursor is refused here, as REST refuses it
    tenant_id = viewer.principal.tenant_id
    with transaction(reader_of(request)) as session:
        run = shaping.flow_run(session, viewer.principal, flow_runs.get_flow_run(session, tenant_id, run_id))
        page = pages.task_runs_page(session, tenant_id, run_id, cursor, byte_budget(request))
        total = task_runs.count_task_runs(session, tenant_id, run_id)
    return render(
        request,
        "run_tasks.html",
        viewer,
        run=run,
        tasks=shaping.task_runs(page.rows),
        first=first,
        total=total,
        next_url=page_url(f"/runs/{run_id}/tasks", cursor=page.next_cursor) if page.next_cursor else None,
    )


@router.post("/runs/{run_id}/cancel", include_in_schema=False)
def cancel_run(request: Request, run_id: str, viewer: ViewerDep, form: CheckedForm) -> Response:
    require(viewer, Action.FLOW_RUN_CANCEL)
    with transaction(factory_of(request)) as session:
        state_changes.cancel(session, viewer.principal.tenant_id, run_id)
    return redirect(f"/runs/{run_id}", request)


@router.post("/runs/{run_id}/retry", include_in_schema=False)
def retry_run(request: Request, run_id: str, viewer: ViewerDep, form: CheckedForm) -> Response:
    require(viewer, Action.FLOW_RUN_RETRY)
    # The page's key makes a double click one retry; a form without one (not from the page) gets one per run and
    # session, so sending it again cannot multiply runs either.
    sent = form.get("idempotency_key", "")
    key = sent if _IDEMPOTENCY_KEY.match(sent) else f"ui-retry:{run_id[:64]}:{hash_secret(viewer.cookie)[:16]}"
    try:
        with transaction(factory_of(request)) as session:
            new_id = reruns.rerun(session, viewer.principal.tenant_id, run_id, key)[0].id
    except IntegrityError:  # the same retry, sent at the same moment, committed first: find its run
        with transaction(factory_of(request)) as session:
            new_id = reruns.rerun(session, viewer.principal.tenant_id, run_id, key)[0].id
    request.app.state.notifier.notify_threadsafe(viewer.principal.tenant_id)
    return redirect(f"/runs/{new_id}", request)
