"""Schedules through the API (SQLite and PostgreSQL): refused at registration with a message, runs created at once,
pause and resume, backfill, and who may do what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from baton.client import Client
from baton.exceptions import ClientError, ConflictError, NotFoundError, PermissionDeniedError
from server.harness import TenantContext


def scheduled_runs(client: Client, flow_name: str) -> list[Any]:
    return [
        run for run in client.list_flow_runs(flow_name=flow_name, state="Scheduled", limit=1000) if run.auto_scheduled
    ]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("every tuesday-ish", "invalid cron 'every tuesday-ish': give five fields"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"interval": 1}, "greater than or equal to 10"),
        ({"cron": "0 0 31 2 *"}, "clocks.0 (cron '0 0 31 2 *' (UTC)): has no occurrence in the 10 years after"),
        ([{"type": "rrule", "rrule": "RRULE:FREQ=DAILY"}], "an rrule needs a DTSTART"),
        # Rules that once froze the server: each evaluation walked from DTSTART, or to the year 9999.
        (
            [{"type": "rrule", "rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=MINUTELY;COUNT=100000000"}],
            "COUNT is not supported",
        ),
        ([{"type": "rrule", "rrule": "DTSTART:00010101T000000Z\nRRULE:FREQ=DAILY"}], "between 1970 and 9000"),
        (
            [
                {
                    "type": "rrule",
                    "rrule": "DTSTART:20260101T000000\nRRULE:FREQ=MINUTELY;INTERVAL=7;BYMONTH=4;BYMONTHDAY=31;BYHOUR=3",
                }
            ],
            "has no occurrence in the 10 years after",
        ),
        ({"cron": "0 9 * * *", "start_date": "0001-01-01T00:00:00+14:00"}, "between 1970-01-01 and 9000-01-01"),
        (
            {"cron": "* * * * *", "parameter_defaults": {"nope": 1}},
            "schedule.clocks.0 (cron '* * * * *' (UTC)): unknown",
        ),
        ({"cron": "* * * * *", "parameter_defaults": {"name": 5}}, "parameter 'name' must be string"),
    ],
)
def test_an_invalid_schedule_is_refused_with_422_saying_what_is_wrong(
    tenant: TenantContext, schedule: Any, message: str
) -> None:
    with pytest.raises(ClientError) as caught:
        tenant.register_flow("bad-schedule", schedule=schedule)
    assert caught.value.status_code == 422
    assert message in caught.value.detail
    assert tenant.admin.list_flows(name="bad-schedule") == []


def test_a_registered_schedule_creates_the_horizons_runs_at_once(tenant: TenantContext, user: Client) -> None:
    # Given a flow registered with a one-minute cron and clock parameters
    before = datetime.now(UTC)
    flow = tenant.register_flow("minutely", schedule={"cron": "* * * * *", "parameter_defaults": {"name": "cron"}})
    after = datetime.now(UTC)
    # Then the next hour's runs exist already (the default horizon), each once, from the schedule
    found = scheduled_runs(user, "minutely")
    times = sorted(run.scheduled_start_time for run in found)
    assert 60 <= len(times) <= 61
    assert len(set(times)) == len(times)
    assert all(t.second == 0 and t.microsecond == 0 for t in times)
    assert before < times[0] <= after + timedelta(minutes=1)
    assert {run.flow_id for run in found} == {flow.id}
    run = user.get_flow_run(found[0].id)
    assert run.parameters == {"name": "cron"} and run.auto_scheduled and run.schedule_key
    # And the stored schedule is the normalized JSON form
    assert flow.schedule is not None and flow.schedule["clocks"][0]["type"] == "cron"


def test_schedule_reads_show_clocks_state_and_next_times(tenant: TenantContext, reader: Client) -> None:
    tenant.register_flow("daily", schedule={"cron": "0 9 * * *", "timezone": "Europe/Berlin"})
    tenant.register_flow("unscheduled")
    schedule = reader.get_schedule("daily")
    assert schedule.active and schedule.flow_version == 1
    [clock] = schedule.clocks
    assert clock.type == "cron" and clock.summary == "cron '0 9 * * *' (Europe/Berlin)"
    assert len(clock.next_times) == 5
    assert {t.astimezone(UTC).hour for t in clock.next_times} <= {7, 8}  # 09:00 Berlin is 07:00 or 08:00 UTC
    assert schedule.next_run_time == clock.next_times[0]
    assert [s.flow_name for s in reader.list_schedules()] == ["daily"]
    assert reader.get_schedule("unscheduled").clocks == []
    with pytest.raises(NotFoundError, match="flow 'nothing' not found"):
        reader.get_schedule("nothing")


def test_pause_deletes_the_waiting_runs_and_resume_creates_them_again(tenant: TenantContext, user: Client) -> None:
    tenant.register_flow("paused", schedule="*/10 * * * *")
    # (the horizon's edge moves on while the test runs: one more run may come in)
    assert len(scheduled_runs(user, "paused")) in (6, 7)
    paused = user.pause_schedule("paused")
    assert (paused.active, paused.next_run_time) == (False, None)
    assert paused.deleted_runs in (6, 7)
    assert scheduled_runs(user, "paused") == []
    assert user.pause_schedule("paused").deleted_runs == 0  # idempotent
    assert [s.active for s in user.list_schedules()] == [False]
    resumed = user.resume_schedule("paused")
    assert resumed.active and resumed.created_runs in (6, 7)
    assert len(scheduled_runs(user, "paused")) in (6, 7)


def test_re_registering_moves_the_waiting_runs_to_the_new_version(tenant: TenantContext, user: Client) -> None:
    first = tenant.register_flow("moving", schedule="*/10 * * * *")
    ids = {run.id for run in scheduled_runs(user, "moving")}
    second = tenant.register_flow("moving", schedule="*/10 * * * *", labels=["v2"])
    moved = [run for run in scheduled_runs(user, "moving") if run.id in ids]
    assert second.version == first.version + 1
    assert len(moved) == len(ids) >= 6
    assert {(run.flow_id, tuple(run.labels)) for run in moved} == {(second.id, ("v2",))}
    tenant.register_flow("moving", schedule=None, labels=["v3"])
    assert scheduled_runs(user, "moving") == []


def test_backfill_creates_past_runs_once(tenant: TenantContext, user: Client) -> None:
    tenant.register_flow("backfilled", schedule="0 * * * *")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first = user.backfill("backfilled", start, start + timedelta(hours=5, minutes=30))
    assert (first.created, first.existing) == (6, 0)
    again = user.backfill("backfilled", start, start + timedelta(hours=5, minutes=30))
    assert (again.created, again.existing) == (0, 6)
    past = [
        run.scheduled_start_time
        for run in user.list_flow_runs(flow_name="backfilled", limit=1000)
        if run.scheduled_start_time < datetime(2026, 1, 2, tzinfo=UTC)
    ]
    assert sorted(past) == [start + timedelta(hours=h) for h in range(6)]


def test_backfill_refuses_too_many_runs_future_ends_and_flows_without_schedule(
    tenant: TenantContext, user: Client
) -> None:
    tenant.register_flow("minutely-bf", schedule="* * * * *")
    tenant.register_flow("plain")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ClientError, match="would create more than 10000 runs") as caught:
        user.backfill("minutely-bf", start, start + timedelta(days=30))
    assert caught.value.status_code == 422
    with pytest.raises(ClientError, match="more than 5 runs"):
        user.backfill("minutely-bf", start, start + timedelta(hours=1), max_runs=5)
    with pytest.raises(ClientError, match="is in the future"):
        user.backfill("minutely-bf", start, datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(ConflictError, match="has no schedule"):
        user.backfill("plain", start, start + timedelta(hours=1))
    # Year 1 with a +14:00 offset cannot even be converted to UTC: a 422, not a 500 (OverflowError)
    with pytest.raises(ClientError, match="between 1970-01-01 and 9000-01-01") as caught:
        body = {"start": "0001-01-01T00:00:00+14:00", "end": "2026-01-01T00:00:00Z"}
        user.request("POST", "/api/schedules/minutely-bf/backfill", json=body)
    assert caught.value.status_code == 422
    with pytest.raises(NotFoundError):
        user.backfill("nothing", start, start + timedelta(hours=1))
    response = tenant.raw(tenant.admin_key).post(
        "/api/schedules/plain/backfill", json={"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"}
    )
    assert response.status_code == 422 and "needs a timezone" in response.text


def test_read_and_runner_keys_and_run_tokens_cannot_pause_or_backfill(
    tenant: TenantContext, reader: Client, runner: Client, user: Client
) -> None:
    tenant.register_flow("guarded", schedule="*/10 * * * *")
    staged = tenant.stage("Pending")
    assert staged.token is not None
    token = tenant.client(staged.token)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for client in (reader, runner, token):
        with pytest.raises(PermissionDeniedError):
            client.pause_schedule("guarded")
        with pytest.raises(PermissionDeniedError):
            client.resume_schedule("guarded")
        with pytest.raises(PermissionDeniedError):
            client.backfill("guarded", start, start + timedelta(hours=1))
    with pytest.raises(PermissionDeniedError):
        token.get_schedule("guarded")
    assert reader.get_schedule("guarded").active
    assert len(scheduled_runs(user, "guarded")) in (6, 7)


def test_another_tenant_cannot_see_or_pause_this_tenants_schedules(
    tenant: TenantContext, other_tenant: TenantContext, user: Client
) -> None:
    tenant.register_flow("secret-schedule", schedule="*/10 * * * *")
    theirs = other_tenant.admin
    with pytest.raises(NotFoundError):
        theirs.get_schedule("secret-schedule")
    with pytest.raises(NotFoundError):
        theirs.pause_schedule("secret-schedule")
    with pytest.raises(NotFoundError):
        theirs.backfill("secret-schedule", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert theirs.list_schedules() == []
    assert user.get_schedule("secret-schedule").active
    assert len(scheduled_runs(user, "secret-schedule")) in (6, 7)


@pytest.mark.parametrize("name", ["a\x00b", "x" * 201, "../flows"])
def test_odd_flow_names_in_the_path_are_404_or_422_never_500(tenant: TenantContext, name: str) -> None:
    from urllib.parse import quote

    response = tenant.raw(tenant.admin_key).post(f"/api/schedules/{quote(name, safe='')}/pause")
    assert response.status_code in (404, 422), response.text
