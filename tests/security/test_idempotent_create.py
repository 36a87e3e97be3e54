"""Item 10: a retried create returns the first run. The Idempotency-Key decides in the database, so the answer is
the same from another replica, after a restart, and when many retries race."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.client import Client
from baton.client.transport import ConnectionLost, HttpTransport, Response
from baton.exceptions import ConflictError
from baton.schemas.responses import FlowRead
from server.harness import TenantContext
from support import ServerProcess, register_source_flow


def _create(raw: httpx.Client, key: str, **body: Any) -> httpx.Response:
    return raw.post("/api/flow_runs", json={"flow_name": "hello", **body}, headers={"Idempotency-Key": key})


def _runs_of(client: Client, flow: str = "hello") -> list[str]:
    return [r.id for r in client.list_flow_runs(flow_name=flow, limit=1000)]


def test_a_retry_with_the_same_key_returns_the_first_run(tenant: TenantContext, flow: FlowRead) -> None:
    raw = tenant.raw(tenant.key("user"))
    key = uuid.uuid4().hex
    first = _create(raw, key, parameters={"name": "Ada"})
    again = _create(raw, key, parameters={"name": "Ada"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert _runs_of(tenant.admin) == [first.json()["id"]]


def test_a_key_reused_for_another_request_is_409(tenant: TenantContext, flow: FlowRead) -> None:
    raw = tenant.raw(tenant.key("user"))
    key = uuid.uuid4().hex
    first = _create(raw, key, parameters={"name": "Ada"})
    other = _create(raw, key, parameters={"name": "Grace"})
    assert other.status_code == 409
    assert key in other.json()["detail"] and first.json()["id"] in other.json()["detail"]
    assert len(_runs_of(tenant.admin)) == 1


def test_keys_belong_to_one_tenant(tenant: TenantContext, other_tenant: TenantContext, flow: FlowRead) -> None:
    other_tenant.register_flow()
    key = uuid.uuid4().hex
    mine = _create(tenant.raw(tenant.key("user")), key)
    theirs = _create(other_tenant.raw(other_tenant.key("user")), key)
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("bad", ["", "a" * 201, "has space", "tab\tkey"])
def test_malformed_keys_are_422(tenant: TenantContext, flow: FlowRead, bad: str) -> None:
    assert _create(tenant.raw(tenant.key("user")), bad).status_code == 422


def test_racing_retries_make_one_run(tenant: TenantContext, flow: FlowRead) -> None:
    # Eight clients send the same create at once (SQLite may answer 503 "busy" to some: the client retries those).
    key = uuid.uuid4().hex
    user_key = tenant.key("user")
    made: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        with Client(tenant.server.url, user_key) as client:
            run_id = client.create_flow_run(flow_name="hello", idempotency_key=key, retries=10).id
        with lock:
            made.append(run_id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(made) == 8
    assert len(set(made)) == 1
    assert _runs_of(tenant.admin) == made[:1]


class _LosesTheFirstAnswer(HttpTransport):
    """Sends every request, then drops the first answer on the floor, as a server killed after its commit would."""

    def __init__(self, base_url: str, key: str) -> None:
        super().__init__(base_url, {"Authorization": f"Bearer {key}"})
        self.keys: list[str | None] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        answer = super().request(method, path, **kwargs)
        self.keys.append((kwargs.get("headers") or {}).get("Idempotency-Key"))
        if len(self.keys) == 1:
            raise ConnectionLost("connection lost before the answer")
        return answer


def test_the_client_retries_a_lost_answer_with_the_same_key(tenant: TenantContext, flow: FlowRead) -> None:
    transport = _LosesTheFirstAnswer(tenant.server.url, tenant.key("user"))
    with Client(tenant.server.url, transport=transport) as client:
        created = client.create_flow_run(flow_name="hello", retries=2)
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1] is not None
    assert _runs_of(tenant.admin) == [created.id]


def test_the_client_does_not_retry_unless_asked(tenant: TenantContext, flow: FlowRead) -> None:
    transport = _LosesTheFirstAnswer(tenant.server.url, tenant.key("user"))
    with Client(tenant.server.url, transport=transport) as client, pytest.raises(Exception, match="connection lost"):
        client.create_flow_run(flow_name="hello")


def test_a_reused_key_through_the_client_is_a_conflict(tenant: TenantContext, flow: FlowRead) -> None:
    user = tenant.client(tenant.key("user"))
    user.create_flow_run(flow_name="hello", idempotency_key="job-42")
    with pytest.raises(ConflictError, match="job-42"):
        user.create_flow_run(flow_name="hello", idempotency_key="job-42", parameters={"name": "x"})


def test_the_key_holds_across_replicas_and_restarts(tmp_path: Path) -> None:
    # Given two server processes on one database (replicas), and a run created through the first with a key
    first = ServerProcess(tmp_path / "a").start()
    try:
        second = ServerProcess(tmp_path / "b", BATON__SERVER__DATABASE_URL=first.database_url).start()
        try:
            admin_key = first.admin_key
            with Client(first.url, admin_key) as a, Client(second.url, admin_key) as b:
                register_source_flow(a)
                made = a.create_flow_run(flow_name="hello", idempotency_key="nightly-2026-12-02")
                # When the retry goes to the other replica, and again after the first one was SIGKILLed and restarted
                through_b = b.create_flow_run(flow_name="hello", idempotency_key="nightly-2026-12-02")
                first.restart()
                after_restart = a.create_flow_run(flow_name="hello", idempotency_key="nightly-2026-12-02")
                # Then every answer is the first run, and it is the only run
                assert through_b.id == after_restart.id == made.id
                assert _runs_of(a) == [made.id]
        finally:
            second.stop()
    finally:
        first.stop()
