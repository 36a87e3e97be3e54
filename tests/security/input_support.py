"""Helpers of the input-safety tests (issue 8, items 3, 4, 7-logs, 8, 12-NaN) and of ``bench/logs.py``.

A server of their own per database (the log quota is a server setting), rows written straight into the database
(what no API call can store any more), and a real flow-run process that prints many lines.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.responses import FlowRunRead, LogRead
from baton.server.database.connection import create_database_engine, create_session_factory
from support import ServerProcess, clean_env

CHATTY_SOURCE = """
from baton import flow

@flow
def chatty(lines: int = 10) -> int:
    for number in range(lines):
        print(f"line {number}")
    return lines
"""


def nested(depth: int, leaf: Any = 1) -> Any:
    """A JSON value ``depth`` levels deep: lists inside a dict (built without recursion)."""
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


def deep_text(depth: int) -> str:
    """``nested(depth)`` as JSON text, written out (json.dumps recurses and gives up near 1000 levels)."""
    return '{"a": ' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


def start_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, **settings_env: str
) -> Iterator[ServerProcess]:
    """A server of the test module's own on the database ``request.param`` names (sqlite or postgresql)."""
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        settings_env["BATON__SERVER__DATABASE_URL"] = cluster.create_database()
    server = ServerProcess(tmp_path_factory.mktemp(f"input-{request.param}"), **settings_env).start()
    yield server
    server.stop()


def database_of(server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(server.database_url, 2)
    yield create_session_factory(engine)
    engine.dispose()


def all_logs(client: Client, run_id: str) -> list[LogRead]:
    logs: list[LogRead] = []
    offset = 0
    while True:
        page = client.get_logs(run_id, offset=offset, limit=5000)
        if not page.logs:
            return logs
        logs.extend(page.logs)
        offset = page.next_offset


@dataclass
class ChattyRun:
    run: FlowRunRead
    logs: list[LogRead]
    seconds: float  # from the engine's start to its exit
    exit_code: int


def run_chatty_flow(server: ServerProcess, admin: Client, lines: int, timeout: float = 600) -> ChattyRun:
    """A real flow-run process (``python -m baton.engine``) of a flow that prints ``lines`` lines; its run and
    every log line stored for it. Claimed and submitted through the API, as an agent would."""
    label = f"chatty-{uuid.uuid4().hex[:8]}"
    admin.register_flow(
        {"name": "chatty", "entrypoint": "chatty", "source": CHATTY_SOURCE, "source_filename": "/flows/chatty.py"}
    )
    run = admin.create_flow_run(flow_name="chatty", parameters={"lines": lines}, labels=[label])
    agent = admin.register_agent(label, "local", [label])
    (claimed,) = admin.claim(agent.id).runs
    admin.set_flow_run_state(run.id, "Submitted", "PID: 0", {"pid": 0})
    env = clean_env(
        Path(server.home),
        BATON__API__URL=server.url,
        BATON__API__KEY=claimed.run_token,
        BATON_FLOW_RUN_ID=run.id,
    )
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "baton.engine"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - started
    return ChattyRun(admin.get_flow_run(run.id), all_logs(admin, run.id), seconds, process.returncode)
