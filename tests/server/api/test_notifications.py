"""Notification rules end to end: a real server sends to a real HTTP receiver on 127.0.0.1 (allowed by the
server's ``notify_allow_hosts``), with short backoffs, a 1 s agent stale time and at most 3 rules per tenant.

The SSRF refusals run against the package's default server, which allows no private address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from baton.client import Client
from baton.exceptions import ConflictError, NotFoundError, PermissionDeniedError
from baton.schemas.notifications import NotificationDeliveryRead
from server.harness import TenantContext, unique
from support import ServerProcess, free_port, wait_for
from webhook_receiver import WebhookReceiver

MAX_ATTEMPTS = 3


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def notify_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    settings_env = {
        "BATON__SERVER__NOTIFY_ALLOW_HOSTS": '["127.0.0.1"]',
        "BATON__SERVER__NOTIFY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "BATON__SERVER__NOTIFY_BACKOFF_SECONDS": "0.1",
        "BATON__SERVER__NOTIFY_MAX_BACKOFF_SECONDS": "0.2",
        "BATON__SERVER__NOTIFY_TIMEOUT_SECONDS": "5",
        "BATON__SERVER__NOTIFY_MAX_RULES_PER_TENANT": "3",
        "BATON__SERVER__SERVICES_INTERVAL_SECONDS": "0.1",
        "BATON__SERVER__AGENT_STALE_SECONDS": "1",
    }
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        settings_env["BATON__SERVER__DATABASE_URL"] = cluster.create_database()
    server = ServerProcess(tmp_path_factory.mktemp(f"notify-server-{request.param}"), **settings_env).start()
    yield server
    server.stop()


@pytest.fixture
def team(notify_server: ServerProcess) -> Iterator[TenantContext]:
    context = TenantContext.create(notify_server)
    yield context
    context.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def deliveries(client: Client, event: str | None = None) -> list[NotificationDeliveryRead]:
    return [d for rule in client.list_notification_rules() for d in rule.recent_deliveries if event in (None, d.event)]


def finished(client: Client, event: str) -> Callable[[], list[NotificationDeliveryRead]]:
    return lambda: [d for d in deliveries(client, event) if d.status != "pending"]


# --- delivery -------------------------------------------------------------------------------------------------


def test_a_failed_run_is_posted_with_a_slack_text_and_structured_fields(
    team: TenantContext, receiver: WebhookReceiver
) -> None:
    # Given a rule on Failed only
    rule = team.admin.add_notification_rule(["failed"], receiver.url, name="ops")
    assert rule.on == ["Failed"]

    # When one run succeeds and another fails
    team.stage("Success")
    failed = team.stage("Failed")

    # Then the failure is POSTed once, with a Slack-compatible text and the structured fields
    post = wait_for(lambda: receiver.posts("Failed"), what="the Failed notification")[0]
    run = team.run(failed.id)
    assert post.body["text"] == f"Baton: flow run 'hello/{run.name}' Failed: the flow ended: Failed"
    assert {k: post.body[k] for k in ("event", "state", "flow", "flow_run_id", "tenant", "rule_id", "message")} == {
        "event": "Failed",
        "state": "Failed",
        "flow": "hello",
        "flow_run_id": failed.id,
        "tenant": team.name,
        "rule_id": rule.id,
        "message": "the flow ended: Failed",
    }
    assert post.path == "/hooks/secret-token?sig=abc"
    assert post.headers["content-type"] == "application/json"
    assert post.headers["x-baton-delivery"] == post.body["delivery_id"]
    delivered = wait_for(finished(team.admin, "Failed"), what="the delivery recorded")
    assert [(d.status, d.attempts, d.last_status_code) for d in delivered] == [("delivered", 1, 200)]
    assert [p.body["event"] for p in receiver.posts()] == ["Failed"]


def test_a_receiver_failing_twice_gets_three_attempts_and_one_delivery(
    team: TenantContext, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500, 500, 200]
    team.admin.add_notification_rule(["Cancelled"], receiver.url)

    team.stage("Cancelled")

    (delivery,) = wait_for(finished(team.admin, "Cancelled"), what="the delivery to finish")
    assert delivery.status == "delivered"
    assert delivery.attempts == 3
    assert [a.status_code for a in delivery.attempt_log] == [500, 500, 200]
    assert [a.error for a in delivery.attempt_log] == ["HTTP 500", "HTTP 500", None]
    assert all(a.response_excerpt is not None and len(a.response_excerpt) <= 200 for a in delivery.attempt_log)
    assert len(receiver.posts()) == 3
    assert {p.body["delivery_id"] for p in receiver.posts()} == {delivery.id}


def test_a_closed_port_is_given_up_after_every_attempt_is_recorded(team: TenantContext) -> None:
    team.admin.add_notification_rule(["Cancelled"], f"http://127.0.0.1:{free_port()}/hook")

    team.stage("Cancelled")

    (delivery,) = wait_for(finished(team.admin, "Cancelled"), what="the delivery to be given up")
    assert delivery.status == "failed"
    assert delivery.attempts == MAX_ATTEMPTS
    assert len(delivery.attempt_log) == MAX_ATTEMPTS
    assert all(a.status_code is None and "ConnectError" in (a.error or "") for a in delivery.attempt_log)
    assert delivery.last_error == delivery.attempt_log[-1].error


def test_a_redirect_is_not_followed_and_not_retried(team: TenantContext, receiver: WebhookReceiver) -> None:
    receiver.statuses = [302]
    team.admin.add_notification_rule(["Cancelled"], receiver.url)

    team.stage("Cancelled")

    (delivery,) = wait_for(finished(team.admin, "Cancelled"), what="the delivery to end")
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 1, 302)
    assert "redirects are not followed" in (delivery.last_error or "")
    assert len(receiver.posts()) == 1


def test_a_late_run_fires_once(team: TenantContext, receiver: WebhookReceiver) -> None:
    team.admin.add_notification_rule(["late"], receiver.url, late_after_seconds=1)
    team.register_flow()
    user = team.client(team.key("user"))

    # Given a run no agent can take: it is late after 1 s
    first = user.create_flow_run(flow_name="hello", labels=[unique("nobody")])
    wait_for(lambda: receiver.posts("late"), what="the late notification")
    # When another run becomes late later (many service ticks after the first fired)
    second = user.create_flow_run(flow_name="hello", labels=[unique("nobody")])
    wait_for(lambda: len(receiver.posts("late")) >= 2, what="the second late notification")

    # Then each run fired once
    assert sorted(p.body["flow_run_id"] for p in receiver.posts("late")) == sorted([first.id, second.id])
    post = receiver.posts("late")[0]
    assert post.body["text"].startswith(f"Baton: flow run 'hello/{first.name}' is late: due ")
    assert post.body["state"] == "Scheduled"


def test_a_lost_agent_fires_once_and_again_after_coming_back(team: TenantContext, receiver: WebhookReceiver) -> None:
    team.admin.add_notification_rule(["agent-lost"], receiver.url)
    runner = team.client(team.key("runner"))

    def lost(agent_id: str) -> list[object]:
        return [p for p in receiver.posts("agent-lost") if p.body["agent"]["id"] == agent_id]

    first = runner.register_agent(unique("agent"), "local", [])
    wait_for(lambda: lost(first.id), what="the first agent lost")
    second = runner.register_agent(unique("agent"), "local", [])
    wait_for(lambda: lost(second.id), what="the second agent lost")
    assert len(lost(first.id)) == 1
    post = lost(first.id)[0]
    assert post.body["text"].startswith(f"Baton: agent '{first.name}' (local) lost: not seen for ")  # type: ignore[attr-defined]

    # An agent that comes back and goes stale again is lost again
    runner.agent_heartbeat(first.id, [])
    wait_for(lambda: len(lost(first.id)) == 2, what="the first agent lost again")


# --- baton notify test ------------------------------------------------------------------------------------------


def test_a_test_event_is_sent_at_once_and_recorded(team: TenantContext, receiver: WebhookReceiver) -> None:
    rule = team.admin.add_notification_rule(["Failed"], receiver.url, name="ops")

    delivery = team.client(team.key("user")).test_notification_rule(rule.id)

    assert (delivery.event, delivery.status, delivery.attempts, delivery.last_status_code) == (
        "test",
        "delivered",
        1,
        200,
    )
    (post,) = receiver.posts("test")
    assert post.body["text"] == "Baton: test notification of rule 'ops' (events: Failed)"
    assert [d.id for d in deliveries(team.admin, "test")] == [delivery.id]


def test_a_test_event_to_a_closed_port_answers_the_error(team: TenantContext) -> None:
    rule = team.admin.add_notification_rule(["Failed"], f"http://127.0.0.1:{free_port()}/")

    delivery = team.admin.test_notification_rule(rule.id)

    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "ConnectError" in (delivery.last_error or "")


# --- who may do what ------------------------------------------------------------------------------------------


def test_webhook_urls_are_never_shown_in_full(team: TenantContext, receiver: WebhookReceiver) -> None:
    created = team.admin.add_notification_rule(["Failed"], receiver.url)
    port = receiver.url.split(":")[2].split("/")[0]

    assert created.webhook == f"http://127.0.0.1:{port}/…"
    for role in ("admin", "user", "read"):
        text = team.raw(team.key(role)).get("/api/notifications").text
        assert "secret-token" not in text and "sig=abc" not in text, role
        assert f"127.0.0.1:{port}/…" in text, role


def test_read_keys_list_and_change_nothing_runners_and_run_tokens_get_403(team: TenantContext) -> None:
    rule = team.admin.add_notification_rule(["Failed"], "http://127.0.0.1:9/")
    reader = team.client(team.key("read"))
    runner = team.client(team.key("runner"))
    token = team.client(team.stage("Running").token or "")

    assert [r.id for r in reader.list_notification_rules()] == [rule.id]
    for client in (reader, runner, token):
        with pytest.raises(PermissionDeniedError):
            client.add_notification_rule(["Failed"], "http://127.0.0.1:9/")
        with pytest.raises(PermissionDeniedError):
            client.remove_notification_rule(rule.id)
        with pytest.raises(PermissionDeniedError):
            client.test_notification_rule(rule.id)
    for client in (runner, token):
        with pytest.raises(PermissionDeniedError):
            client.list_notification_rules()
    assert [r.id for r in team.admin.list_notification_rules()] == [rule.id]


def test_another_tenants_rules_are_404_and_never_listed(notify_server: ServerProcess, team: TenantContext) -> None:
    rule = team.admin.add_notification_rule(["Failed"], "http://127.0.0.1:9/")
    other = TenantContext.create(notify_server)
    try:
        with pytest.raises(NotFoundError):
            other.admin.remove_notification_rule(rule.id)
        with pytest.raises(NotFoundError):
            other.admin.test_notification_rule(rule.id)
        assert other.admin.list_notification_rules() == []
    finally:
        other.close()
    assert [r.id for r in team.admin.list_notification_rules()] == [rule.id]


def test_rules_are_bounded_per_tenant_and_removed(team: TenantContext) -> None:
    rules = [team.admin.add_notification_rule(["Failed"], f"http://127.0.0.1:9/{n}") for n in range(3)]

    with pytest.raises(ConflictError, match="NOTIFY_MAX_RULES_PER_TENANT"):
        team.admin.add_notification_rule(["Failed"], "http://127.0.0.1:9/3")
    removed = team.client(team.key("user")).remove_notification_rule(rules[0].id)

    assert removed.id == rules[0].id
    assert [r.id for r in team.admin.list_notification_rules()] == [r.id for r in rules[1:]]
    with pytest.raises(NotFoundError):
        team.admin.remove_notification_rule(rules[0].id)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"on": ["Exploded"], "webhook": "http://127.0.0.1:9/"}, "unknown event 'Exploded'"),
        ({"on": [], "webhook": "http://127.0.0.1:9/"}, "at least 1 item"),
        ({"on": ["Failed"], "webhook": "http://127.0.0.1:9/", "late_after_seconds": 0}, "greater than or equal"),
        ({"on": ["Failed"], "webhook": "http://127.0.0.1:9/", "flow": "a/b"}, "pattern"),
        ({"on": ["Failed"], "webhook": "http://127.0.0.1:9/" + "x" * 2100}, "at most 2048"),
        ({"on": ["Failed"], "webhook": "hooks.example.com/x"}, "scheme must be http or https"),
    ],
)
def test_bad_rules_are_422(team: TenantContext, body: dict[str, object], message: str) -> None:
    response = team.raw(team.admin_key).post("/api/notifications", json=body)

    assert response.status_code == 422, response.text
    assert message in response.text
    assert team.admin.list_notification_rules() == []


# --- SSRF, on a server that allows no private address -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/hook", "private"),
        ("http://[::ffff:192.168.0.1]/hook", "private"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("file:///etc/passwd", "scheme must be http or https, not 'file'"),
        ("ftp://hooks.example.com/x", "scheme must be http or https, not 'ftp'"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme must be http or https"),
    ],
)
def test_webhooks_to_internal_addresses_are_refused_by_default(tenant: TenantContext, url: str, reason: str) -> None:
    response = tenant.raw(tenant.admin_key).post("/api/notifications", json={"on": ["Failed"], "webhook": url})

    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert tenant.admin.list_notification_rules() == []


def test_a_public_host_name_is_taken_and_checked_again_when_sent(tenant: TenantContext) -> None:
    # `.invalid` never resolves (RFC 6761): the name is accepted now, and the send-time check records why not.
    rule = tenant.admin.add_notification_rule(["Failed"], "https://hooks.example.invalid/services/T0/B0/secret")

    delivery = tenant.admin.test_notification_rule(rule.id)

    assert rule.webhook == "https://hooks.example.invalid/…"
    assert delivery.status == "failed"
    assert "does not resolve" in (delivery.last_error or "")


def test_openapi_documents_the_routes(tenant: TenantContext) -> None:
    paths = httpx.get(f"{tenant.server.url}/api/openapi.json", timeout=10).json()["paths"]

    assert set(paths["/api/notifications"]) == {"get", "post"}
    assert set(paths["/api/notifications/{rule_id}"]) == {"delete"}
    assert set(paths["/api/notifications/{rule_id}/test"]) == {"post"}
