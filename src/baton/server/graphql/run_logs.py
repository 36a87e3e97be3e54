"""``write_run_logs``: Prefect 1's log lines, stored as Baton's lines of their runs (the run's log quota, the log
grace after a run ends and a runner key's reach apply as over REST)."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from ariadne import MutationType
from pydantic import ValidationError

from baton.schemas.actions import MAX_LOGS_PER_BATCH, LogEntry
from baton.server.access import Action, run_holder
from baton.server.database.connection import transaction
from baton.server.graphql.core import Info, context_of, require
from baton.server.models import flow_runs, logs, prefect1_runs
from baton.server.models.errors import InvalidRequest, LogsClosed

mutation = MutationType()

# What a Prefect 1 agent says once it has deployed a run: what it deployed (a PID, a container id).
_DEPLOYED = re.compile(r"^Submitted for execution: (.+)$", re.DOTALL)


# Python's level names; any other (NOTSET, a custom level's) counts as INFO.
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}


def _entry(line: dict[str, Any], index: int) -> LogEntry:
    level = line.get("level")
    number = _LEVELS.get(level.upper(), logging.INFO) if isinstance(level, str) else logging.INFO
    try:
        return LogEntry(
            timestamp=line.get("timestamp") or datetime.now(UTC),
            level=number,
            name=(line.get("name") or "prefect")[:500],
            message=line.get("message") or "",
            task_run_id=line.get("task_run_id"),
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"logs[{index}].{where}: {first['msg']}") from exc


@mutation.field("write_run_logs")
def _write_run_logs(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.LOGS_WRITE)
    lines = input["logs"]
    if len(lines) > MAX_LOGS_PER_BATCH:
        raise InvalidRequest(f"at most {MAX_LOGS_PER_BATCH} log lines per call")
    by_run: dict[str, list[LogEntry]] = defaultdict(list)
    for index, line in enumerate(lines):
        by_run[line["flow_run_id"]].append(_entry(line, index))
    context = context_of(info)
    quota = logs.LogQuota.of(context.server)
    closed: list[str] = []
    with transaction(context.sessions) as session:
        for flow_run_id, entries in by_run.items():
            run_holder(session, principal, flow_run_id)
            run = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
            try:
                logs.write_logs(session, run, entries, quota)
            except LogsClosed:
                closed.append(flow_run_id)
                continue
            if run.kind == prefect1_runs.KIND:
                for entry in entries:
                    if (deployed := _DEPLOYED.match(entry.message)) is not None:
                        prefect1_runs.note_deployment(session, run, deployed.group(1))
    if closed:
        return {"success": True, "error": f"runs ended too long ago to take logs: {', '.join(closed)}"}
    return {"success": True, "error": None}
