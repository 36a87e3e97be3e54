"""The notification outbox in process, on SQLite and PostgreSQL, with an injected clock: events written with the
state change or not at all, one cheap query when a tenant has no rules, leases that keep two senders apart,
backoff timing without waiting, once-only late and agent-lost events, and the SSRF rule at send time."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.notifications import NotificationRuleCreate
from baton.schemas.states import StateName
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import Agent, Flow, FlowRun, NotificationDelivery, Tenant
from baton.server.models import flow_runs, notifications
from baton.server.models import notification_outbox as outbox
from baton.server.services.notifications import NotificationService, WebhookSender
from baton.server.webhook_targets import AllowList, UnsafeWebhook, resolve
from baton.settings import ServerSettings
from server.services.fakes import FakeClock
from support import free_port
from webhook_receiver import WebhookReceiver

LOCAL = AllowList.parse(["127.0.0.1"])
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Now:
    def __init__(self) -> None:
        self.value = T0

    def __call__(self) -> datetime:
        return self.value


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    return migrated_engine


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def make_world(factory: sessionmaker[Session]) -> tuple[str, str]:
    """A tenant and a Scheduled run of flow ``etl``: (tenant id, run id)."""
    with transaction(factory) as session:
        tenant = Tenant(name=f"t-{id(session)}")
        session.add(tenant)
        session.flush()
        flow = Flow(
            tenant_id=tenant.id,
            name="etl",
            version=1,
            entrypoint="etl",
            content_hash="x",
            storage={},
            run_config={},
            labels=[],
            parameters_schema={},
            tasks=[],
        )
        session.add(flow)
        session.flush()
        run = FlowRun(
            tenant_id=tenant.id,
            flow_id=flow.id,
            name="brave-otter",
            parameters={},
            labels=[],
            run_config={},
            scheduled_start_time=T0,
            state="Scheduled",
        )
        session.add(run)
        session.flush()
        return tenant.id, run.id


def add_rule(factory: sessionmaker[Session], tenant_id: str, on: list[str], url: str, **extra: Any) -> str:
    with transaction(factory) as session:
        payload = NotificationRuleCreate(on=on, webhook=url, **extra)
        return notifications.create_rule(session, tenant_id, payload, LOCAL, 100).id


def count_deliveries(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as session:
        return session.scalar(select(func.count()).select_from(NotificationDelivery)) or 0


def cancel(session: Session, run_id: str, message: str = "stopped by hand") -> None:
    run = session.get(FlowRun, run_id)
    assert run is not None
    flow_runs.transition(session, run, StateName.CANCELLED, message)


def settings(**extra: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "notify_allow_hosts": ["127.0.0.1"],
        "notify_backoff_seconds": 10,
        "notify_max_attempts": 3,
        "agent_stale_seconds": 60,
        "outage_grace_margin_seconds": 0,
    }
    return ServerSettings(**{**values, **extra})


# --- the outbox guarantee -----------------------------------------------------------------------------------


def test_an_event_is_written_with_its_state_change_or_not_at_all(factory: sessionmaker[Session]) -> None:
    tenant_id, run_id = make_world(factory)
    add_rule(factory, tenant_id, ["Cancelled"], "http://127.0.0.1:9/")

    # A state change whose transaction rolls back leaves no event
    with pytest.raises(RuntimeError), transaction(factory) as session:
        cancel(session, run_id)
        raise RuntimeError("the request failed after the transition")
    assert count_deliveries(factory) == 0

    # A committed one leaves exactly one, with the message of that state change
    with transaction(factory) as session:
        cancel(session, run_id)
    with transaction(factory) as session:
        (delivery,) = session.scalars(select(NotificationDelivery)).all()
        assert delivery.payload["text"] == "Baton: flow run 'etl/brave-otter' Cancelled: stopped by hand"
        assert (delivery.event, delivery.status) == ("Cancelled", "pending")


def test_a_tenant_without_rules_costs_a_transition_one_query(engine: Engine, factory: sessionmaker[Session]) -> None:
    _tenant_id, run_id = make_world(factory)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with transaction(factory) as session:
            run = session.get(FlowRun, run_id)
            assert run is not None
            statements.clear()
            flow_runs.transition(session, run, StateName.CANCELLED, "x")
            session.flush()
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert len([s for s in statements if "notification_rules" in s]) == 1
    assert not [s for s in statements if "notification_deliveries" in s]


def test_rules_match_events_and_flows(factory: sessionmaker[Session]) -> None:
    tenant_id, run_id = make_world(factory)
    add_rule(factory, tenant_id, ["Failed"], "http://127.0.0.1:9/")
    add_rule(factory, tenant_id, ["cancelled"], "http://127.0.0.1:9/", flow="other")
    wanted = add_rule(factory, tenant_id, ["Cancelled", "Success"], "http://127.0.0.1:9/", flow="etl")

    with transaction(factory) as session:
        cancel(session, run_id)

    with transaction(factory) as session:
        assert session.scalars(select(NotificationDelivery.rule_id)).all() == [wanted]


# --- sending: leases, backoff, attempts ---------------------------------------------------------------------


def test_two_senders_never_hold_one_delivery(factory: sessionmaker[Session]) -> None:
    tenant_id, run_id = make_world(factory)
    add_rule(factory, tenant_id, ["Cancelled"], "http://127.0.0.1:9/")
    with transaction(factory) as session:
        cancel(session, run_id)
    now = datetime.now(UTC)

    with transaction(factory) as session:
        first = outbox.claim_due(session, now, 10, lease_seconds=60)
    with transaction(factory) as session:
        second = outbox.claim_due(session, now + timedelta(seconds=30), 10, lease_seconds=60)
    assert (len(first), second) == (1, [])

    # Once the lease has run out another sender takes it, and the first one's late answer is not recorded
    with transaction(factory) as session:
        third = outbox.claim_due(session, now + timedelta(seconds=61), 10, lease_seconds=60)
    result = outbox.AttemptResult(started=now, duration_ms=5, status_code=200, delivered=True)
    backoff = outbox.Backoff(3, 10, 300)
    with transaction(factory) as session:
        assert not outbox.record(session, first[0], result, now, backoff)
        assert outbox.record(session, third[0], result, now, backoff)


def test_backoff_waits_between_attempts_with_an_injected_clock(
    factory: sessionmaker[Session], receiver: WebhookReceiver
) -> None:
    receiver.statuses = [503, 500, 200]
    tenant_id, run_id = make_world(factory)
    add_rule(factory, tenant_id, ["Cancelled"], receiver.url)
    with transaction(factory) as session:
        cancel(session, run_id)
    now = Now()
    now.value = datetime.now(UTC)
    service = NotificationService(factory, settings(), now=now, clock=FakeClock())
    try:
        assert service.send_due() == 1  # 503: due again after 10 s
        now.value += timedelta(seconds=9)
        assert service.send_due() == 0
        now.value += timedelta(seconds=1)
        assert service.send_due() == 1  # 500: due again after 20 s
        now.value += timedelta(seconds=19)
        assert service.send_due() == 0
        now.value += timedelta(seconds=1)
        assert service.send_due() == 1  # 200
        now.value += timedelta(hours=1)
        assert service.send_due() == 0
    finally:
        service.close()

    with transaction(factory) as session:
        (read,) = notifications.delivery_reads(session, session.scalars(select(NotificationDelivery)).all())
    assert (read.status, read.attempts) == ("delivered", 3)
    assert [a.status_code for a in read.attempt_log] == [503, 500, 200]
    assert len(receiver.posts()) == 3


def test_backoff_is_capped() -> None:
    backoff = outbox.Backoff(10, 10, 60)

    assert [backoff.delay(n) for n in range(1, 7)] == [10, 20, 40, 60, 60, 60]


def test_a_receiver_refusing_with_4xx_is_not_retried(factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    receiver.statuses = [404]
    tenant_id, run_id = make_world(factory)
    add_rule(factory, tenant_id, ["Cancelled"], receiver.url)
    with transaction(factory) as session:
        cancel(session, run_id)
    service = NotificationService(factory, settings(), clock=FakeClock())
    try:
        assert service.send_due() == 1
    finally:
        service.close()

    with transaction(factory) as session:
        delivery = session.scalars(select(NotificationDelivery)).one()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 1, "HTTP 404")


# --- found events: once only ------------------------------------------------------------------------------------


def test_late_runs_are_found_once_per_rule(factory: sessionmaker[Session]) -> None:
    tenant_id, run_id = make_world(factory)  # due at T0
    add_rule(factory, tenant_id, ["late"], "http://127.0.0.1:9/", late_after_seconds=60)
    week = 7 * 24 * 3600

    with transaction(factory) as session:
        assert outbox.find_late_runs(session, T0 + timedelta(seconds=59), week) == 0
    for _tick in range(3):
        with transaction(factory) as session:
            outbox.find_late_runs(session, T0 + timedelta(seconds=61), week)

    with transaction(factory) as session:
        (delivery,) = session.scalars(select(NotificationDelivery)).all()
    assert (delivery.event, delivery.once_key, delivery.payload["flow_run_id"]) == ("late", f"late:{run_id}", run_id)


def test_lost_agents_are_found_once_per_time_they_go_stale(factory: sessionmaker[Session]) -> None:
    tenant_id, _run_id = make_world(factory)
    add_rule(factory, tenant_id, ["agent-lost"], "http://127.0.0.1:9/")
    with transaction(factory) as session:
        agent = Agent(tenant_id=tenant_id, name="a1", type="local", labels=[], labels_key="", last_seen=T0)
        session.add(agent)
    week = 7 * 24 * 3600

    for _tick in range(3):
        with transaction(factory) as session:
            outbox.find_lost_agents(session, T0 + timedelta(seconds=91), 90, week)
    assert count_deliveries(factory) == 1
    with transaction(factory) as session:  # it came back, and went quiet again
        session.get(Agent, agent.id).last_seen = T0 + timedelta(seconds=100)  # type: ignore[union-attr]
    with transaction(factory) as session:
        outbox.find_lost_agents(session, T0 + timedelta(seconds=200), 90, week)
    assert count_deliveries(factory) == 2


def test_old_finished_deliveries_are_pruned(factory: sessionmaker[Session]) -> None:
    tenant_id, _run_id = make_world(factory)
    rule_id = add_rule(factory, tenant_id, ["Cancelled"], "http://127.0.0.1:9/")
    with transaction(factory) as session:
        rule = notifications.get_rule(session, tenant_id, rule_id)
        for n in range(5):
            delivery = notifications.new_delivery(rule, "Cancelled", {"text": "x"}, T0 + timedelta(seconds=n))
            delivery.status = "delivered" if n else "pending"
            session.add(delivery)

    with transaction(factory) as session:
        assert outbox.prune(session, T0 + timedelta(days=30), 7 * 24 * 3600, kept_per_rule=2) == 4

    with transaction(factory) as session:
        assert session.scalars(select(NotificationDelivery.status)).all() == ["pending"]


# --- SSRF at send time --------------------------------------------------------------------------------------


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    real = socket.getaddrinfo

    def lookup(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def test_a_name_resolving_to_an_internal_address_is_refused_at_send_time(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"rebind.example.com": ["127.0.0.1"], "mixed.example.com": ["93.184.216.34", "10.0.0.5"]})

    with pytest.raises(UnsafeWebhook, match="loopback"):
        resolve("http://rebind.example.com/hook", AllowList())
    with pytest.raises(UnsafeWebhook, match="private"):
        resolve("http://mixed.example.com/hook", AllowList())
    assert resolve("http://mixed.example.com/hook", AllowList.parse(["10.0.0.0/8"])) == ipaddress.ip_address(
        "93.184.216.34"
    )


def test_the_sender_connects_to_the_address_it_checked(
    monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver
) -> None:
    # The name resolves to the (allowed) receiver's address; the request keeps the name in its Host header.
    fake_dns(monkeypatch, {"hooks.internal.example": ["127.0.0.1"]})
    port = receiver.url.split(":")[2].split("/")[0]
    sender = WebhookSender(LOCAL, 5)
    try:
        outgoing = outbox.Outgoing("d1", f"http://hooks.internal.example:{port}/x", {"text": "hi"}, 0, "t")
        result = sender.send(outgoing)
        refused = WebhookSender(AllowList(), 5).send(outgoing)
    finally:
        sender.close()

    assert (result.delivered, result.status_code) == (True, 200)
    assert receiver.posts()[0].headers["host"] == f"hooks.internal.example:{port}"
    assert (refused.delivered, refused.retry) == (False, False)
    assert "loopback" in (refused.error or "")
    assert len(receiver.posts()) == 1


def test_a_closed_port_is_a_retried_error() -> None:
    sender = WebhookSender(LOCAL, 5)
    try:
        result = sender.send(outbox.Outgoing("d1", f"http://127.0.0.1:{free_port()}/", {}, 0, "t"))
    finally:
        sender.close()

    assert (result.delivered, result.retry, result.status_code) == (False, True, None)
    assert "ConnectError" in (result.error or "")


def test_two_replicas_sending_at_once_post_each_delivery_once(engine: Engine, receiver: WebhookReceiver) -> None:
    # Given 30 due deliveries and two services, each with an engine (a pool) of its own, as two replicas have
    second = create_database_engine(engine.url.render_as_string(hide_password=False), 4)
    factories = [create_session_factory(engine), create_session_factory(second)]
    tenant_id, _run_id = make_world(factories[0])
    rule_id = add_rule(factories[0], tenant_id, ["Failed"], receiver.url)
    with transaction(factories[0]) as session:
        rule = notifications.get_rule(session, tenant_id, rule_id)
        for n in range(30):
            session.add(notifications.new_delivery(rule, "Failed", {"text": f"n{n}"}, datetime.now(UTC)))
    services = [NotificationService(factory, settings(), clock=FakeClock()) for factory in factories]

    # When both send until nothing is due
    def drain(service: NotificationService) -> int:
        sent = 0
        while (recorded := service.send_due()) > 0:
            sent += recorded
        return sent

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = list(pool.map(drain, services))
    finally:
        for service in services:
            service.close()
        second.dispose()

    # Then every delivery was POSTed exactly once, and both took part or one took all: never both the same one
    ids = [p.body["delivery_id"] for p in receiver.posts()]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert sum(counts) == 30
    assert count_deliveries(factories[0]) == 30


def test_late_rules_of_a_flow_ignore_other_flows(factory: sessionmaker[Session]) -> None:
    tenant_id, _run_id = make_world(factory)  # a run of flow "etl", due at T0
    add_rule(factory, tenant_id, ["late"], "http://127.0.0.1:9/", flow="other")

    with transaction(factory) as session:
        assert outbox.find_late_runs(session, T0 + timedelta(hours=1), 7 * 24 * 3600) == 0
