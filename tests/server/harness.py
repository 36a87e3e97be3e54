"""Building blocks of the API server tests: a tenant of its own per test on a shared server, runs in any state.

A fresh tenant per test is what keeps a shared server honest: claims only ever see the runs of their own tenant,
so tests cannot steal each other's runs, and the unlabelled-run cases of the label rule stay exact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.core import Role
from baton.schemas.responses import ClaimedRun, FlowRead, FlowRunRead, TenantCreated
from baton.server.bootstrap import create_tenant
from baton.server.database.connection import transaction
from baton.server.models import tenants
from baton.settings import BatonSettings, load_settings
from support import ServerProcess, register_source_flow


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def database_settings(server: ServerProcess) -> BatonSettings:
    """Settings pointing at ``server``'s SQLite file, untouched by the developer's own BATON_ environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATON_HOME", str(server.home))
        for name in list(os.environ):
            if name.startswith("BATON__"):
                patch.delenv(name)
        return load_settings(server={"database_url": server.database_url})


def raw_http(server: ServerProcess, key: str | None = None) -> httpx.Client:
    """A plain httpx client for malformed input. ``Connection: close``: one answer per connection, so an
    error answer that makes the server drop the connection cannot leak into the next request."""
    headers = {"Connection": "close"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=server.url, headers=headers, timeout=30, verify=False)


@dataclass
class Staged:
    """A flow run put in a given state: its id, its run token (while claimed) and the agent that claimed it."""

    id: str
    token: str | None = None
    agent_id: str | None = None


class TenantContext:
    """One tenant on a running server, with keys of each role and helpers to build runs."""

    def __init__(self, server: ServerProcess, created: TenantCreated) -> None:
        self.server = server
        self.id = created.id
        self.name = created.name
        self.admin_key = created.admin_key
        self._clients: dict[str, Client] = {}
        self._raw: list[httpx.Client] = []
        self._keys: dict[str, str] = {"admin": created.admin_key}
        self.admin = self.client(self.admin_key)

    @classmethod
    def create(cls, server: ServerProcess, factory: sessionmaker[Session] | None = None) -> TenantContext:
        """A new tenant: straight in the database through ``factory`` when given (fast), else the way
        ``baton server create-tenant`` does it (``bootstrap.create_tenant``)."""
        name = unique("tenant")
        if factory is None:
            return cls(server, create_tenant(database_settings(server), name))
        with transaction(factory) as session:
            tenant = tenants.create_tenant(session, name)
            _key, secret = tenants.create_api_key(session, tenant.id, Role.ADMIN, f"{name} admin")
            created = TenantCreated(id=tenant.id, name=name, admin_key=secret)
        return cls(server, created)

    # --- keys and clients ----------------------------------------------------------------------------

    def client(self, key: str) -> Client:
        """A client with ``key`` (an API key or a run token); one per key, closed with the tenant."""
        if key not in self._clients:
            self._clients[key] = Client(self.server.url, key)
        return self._clients[key]

    def new_key(self, role: str) -> str:
        return self.admin.create_api_key(role, name=unique(role)).key

    def key(self, role: str) -> str:
        """This tenant's key of ``role`` (one per role, made on first use)."""
        if role not in self._keys:
            self._keys[role] = self.new_key(role)
        return self._keys[role]

    def raw(self, key: str | None = None) -> httpx.Client:
        client = raw_http(self.server, key)
        self._raw.append(client)
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        for raw in self._raw:
            raw.close()

    # --- flows and runs ----------------------------------------------------------------------------

    def register_flow(self, name: str = "hello", labels: list[str] | None = None, **extra: Any) -> FlowRead:
        return self.admin.get_flow(register_source_flow(self.admin, name=name, labels=labels, **extra))

    def stage(self, state: str, runner: Client | None = None) -> Staged:
        """A new run of flow ``hello`` in ``state``, reached through the API the way agents and runs do it.

        Each run gets a label of its own and is claimed by an agent with exactly that label, so the claim takes
        this run and no other one.
        """
        runner = runner or self.client(self.key("runner"))
        user = self.client(self.key("user"))
        if not self.admin.list_flows(name="hello"):
            self.register_flow()
        label = unique("only")
        run = user.create_flow_run(flow_name="hello", labels=[label])
        if state == "Scheduled":
            return Staged(run.id)
        if state == "Cancelled":
            user.cancel_flow_run(run.id)
            return Staged(run.id)
        agent = runner.register_agent(unique("agent"), "local", [label])
        staged = Staged(run.id, self.claim_one(runner, agent.id, run.id).run_token, agent.id)
        if state == "Pending":
            return staged
        runner.set_flow_run_state(run.id, "Submitted", "PID: 1234", {"pid": 1234})
        if state == "Submitted":
            return staged
        token = self.client(staged.token or "")
        token.set_flow_run_state(run.id, "Running")
        if state == "Running":
            return staged
        if state == "Cancelling":
            user.cancel_flow_run(run.id)
        elif state in ("Success", "Failed"):
            token.set_flow_run_state(run.id, state, f"the flow ended: {state}")
        else:
            raise ValueError(f"cannot stage a run in state {state}")
        return staged

    @staticmethod
    def claim_one(runner: Client, agent_id: str, run_id: str) -> ClaimedRun:
        claimed = runner.claim(agent_id).runs
        assert [c.flow_run.id for c in claimed] == [run_id]
        return claimed[0]

    def run(self, run_id: str) -> FlowRunRead:
        return self.admin.get_flow_run(run_id)


def migrated_database_url(request: pytest.FixtureRequest, directory: Path, database: str) -> str:
    """The URL of a new database migrated to head: a SQLite file in ``directory``, or a PostgreSQL database."""
    if database == "postgresql":
        return str(request.getfixturevalue("postgres_cluster").create_migrated_database())
    path = directory / "own.db"
    shutil.copyfile(request.getfixturevalue("_migrated_sqlite_file"), path)
    return f"sqlite:///{path}"
