"""A flow's ``timeout_seconds``: validated strictly, stored, returned, and part of the flow's content."""

from __future__ import annotations

from typing import Any

import pytest

from baton.schemas.actions import FlowCreate
from baton.schemas.core import MAX_TIMEOUT_SECONDS
from baton.server.models.flows import _content_hash
from server.harness import TenantContext

from .test_flows import flow_payload


def test_a_timeout_is_stored_and_returned(tenant: TenantContext) -> None:
    http = tenant.raw(tenant.admin_key)
    created = http.post("/api/flows", json=flow_payload(timeout_seconds=30))
    assert created.status_code == 201, created.text
    assert created.json()["timeout_seconds"] == 30
    fetched = http.get(f"/api/flows/{created.json()['id']}")
    assert fetched.json()["timeout_seconds"] == 30


def test_a_flow_without_timeout_reads_as_none(tenant: TenantContext) -> None:
    created = tenant.raw(tenant.admin_key).post("/api/flows", json=flow_payload())
    assert created.json()["timeout_seconds"] is None


def test_a_changed_timeout_makes_the_next_version(tenant: TenantContext) -> None:
    http = tenant.raw(tenant.admin_key)
    first = http.post("/api/flows", json=flow_payload(timeout_seconds=30)).json()
    same = http.post("/api/flows", json=flow_payload(timeout_seconds=30)).json()
    changed = http.post("/api/flows", json=flow_payload(timeout_seconds=60)).json()
    assert same["version"] == first["version"]
    assert changed["version"] == first["version"] + 1


def test_no_timeout_keeps_the_content_hash_flows_had_before_the_field() -> None:
    # Re-registering an unchanged flow after the upgrade must not make a new version.
    import hashlib
    import json

    payload = FlowCreate.model_validate(flow_payload())
    # Fields added since (timeout, then the run policies of issue 9) are left out of the hash while unset.
    added = {"timeout_seconds", "retries", "retry_delay_seconds", "max_lateness_seconds", "max_concurrent_runs"}
    before = {key: value for key, value in payload.model_dump(mode="json").items() if key not in added}
    del before["storage"]["bundle"]  # and storage's bundle (issue 11)
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert _content_hash(payload) == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("value", [0, -1, MAX_TIMEOUT_SECONDS + 1, "30", 2.5, True])
def test_an_invalid_timeout_is_a_422_naming_the_field(tenant: TenantContext, value: Any) -> None:
    response = tenant.raw(tenant.admin_key).post("/api/flows", json=flow_payload(timeout_seconds=value))
    assert response.status_code == 422, response.text
    assert "timeout_seconds" in response.text
