"""A run that ends and frees a slot wakes the agents long-polling for the runs that waited for it (not only the
periodic re-check): here the re-check is a minute away, and the waiting claim gets the run at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import ServerProcess, register_source_flow


@pytest.mark.parametrize(("limit_by", "end"), [("flow", "success"), ("label", "success"), ("flow", "dead deployment")])
def test_a_freed_slot_wakes_a_waiting_claim(
    start_server: Callable[..., ServerProcess], limit_by: str, end: str
) -> None:
    server = start_server(BATON__SERVER__CLAIM_RECHECK_SECONDS="60", BATON__SERVER__MAX_CLAIM_WAIT_SECONDS="60")
    admin = server.client()
    labels = ["gpu"] if limit_by == "label" else []
    if limit_by == "label":
        admin.set_label_limit("gpu", 1)
    register_source_flow(admin, "etl", max_concurrent_runs=1 if limit_by == "flow" else None)
    first, second = (admin.create_flow_run(flow_name="etl", labels=labels).id for _ in range(2))
    holder = admin.register_agent("holder", "local", labels)
    waiter = admin.register_agent("waiter", "local", labels)
    [claimed] = admin.claim(holder.id).runs
    assert claimed.flow_run.id == first

    with server.client(claimed.run_token) as token, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(admin.claim, waiter.id, 1, 60.0)
        time.sleep(0.5)  # let the claim find nothing and begin to wait
        admin.set_flow_run_state(first, "Submitted", "PID: 1", {"pid": 1})
        if end == "success":
            token.set_flow_run_state(first, "Running")
            token.set_flow_run_state(first, "Success")
        else:  # the holding agent reports that the deployment died
            admin.agent_heartbeat(holder.id, [{"flow_run_id": first, "alive": False, "exit_code": 137}])
        runs = waiting.result(timeout=90).runs
        waited = time.monotonic() - started

    assert [run.flow_run.id for run in runs] == [second]
    assert waited < 30, f"the claim waited {waited:.0f} s: it was not woken when the slot was freed"
