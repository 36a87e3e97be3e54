"""``baton notify add|list|test|remove`` against a real ``baton server start`` that may send to 127.0.0.1, and a
real HTTP receiver there."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cli_support import CliServer

from support import clean_env, free_port, local_get
from webhook_receiver import WebhookReceiver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    home = tmp_path_factory.mktemp("notify-cli-home")
    port = free_port()
    log_path = home / "server.log"
    env = clean_env(home, BATON__SERVER__NOTIFY_ALLOW_HOSTS='["127.0.0.1"]')
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "server", "start", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    started = CliServer(home, f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if local_get(f"{started.url}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    yield started
    process.terminate()
    process.wait(15)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def test_add_list_test_and_remove_a_rule(server: CliServer, receiver: WebhookReceiver) -> None:
    # add: the webhook is shown without its secret path and query
    added = ok(
        server.baton("notify", "add", "--on", "Failed", "--on", "late", "--webhook", receiver.url, "--name", "ops")
    )
    assert "secret-token" not in added.stdout and "sig=abc" not in added.stdout
    assert "Failed, late" in added.stdout
    rule = next(r for r in as_json(server.baton("notify", "list", "--json")) if r["name"] == "ops")

    # test: sent now, the result shown, the receiver has it
    tested = ok(server.baton("notify", "test", rule["id"]))
    assert "delivered" in tested.stdout and "HTTP 200" in tested.stdout
    assert [p.body["event"] for p in receiver.posts()] == ["test"]

    # list: the rule and its recent delivery
    listed = ok(server.baton("notify", "list"))
    assert rule["id"] in listed.stdout and "Recent deliveries" in listed.stdout and "test" in listed.stdout
    assert "secret-token" not in listed.stdout

    # remove
    removed = ok(server.baton("notify", "remove", rule["id"]))
    assert f"Removed notification rule {rule['id']}" in removed.stdout
    assert rule["id"] not in server.baton("notify", "list").stdout


def test_a_test_that_is_not_delivered_exits_1_with_the_error(server: CliServer) -> None:
    rule = as_json(
        server.baton("notify", "add", "--on", "Failed", "--webhook", f"http://127.0.0.1:{free_port()}/", "--json")
    )

    result = server.baton("notify", "test", rule["id"])

    assert result.returncode == 1
    assert "the test notification was not delivered" in result.stderr and "ConnectError" in result.stderr
    ok(server.baton("notify", "remove", rule["id"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--on", "Exploded", "--webhook", "http://127.0.0.1:9/"], "unknown event 'Exploded'"),
        (["--on", "Failed", "--webhook", "http://169.254.169.254/latest/"], "link-local"),
        (["--on", "Failed", "--webhook", "http://10.0.0.1/"], "private"),
        (["--on", "Failed", "--webhook", "file:///etc/passwd"], "scheme must be http or https"),
        (["--on", "Failed", "--webhook", "http://127.0.0.1:9/", "--late-after", "0"], "--late-after"),
        (["--webhook", "http://127.0.0.1:9/"], "--on"),
    ],
)
def test_bad_input_exits_2_with_one_line(server: CliServer, args: list[str], message: str) -> None:
    result = server.baton("notify", "add", *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_rule_exits_1(server: CliServer) -> None:
    result = server.baton("notify", "remove", "7f9c0a3e-0000-4000-8000-000000000000")

    assert result.returncode == 1
    assert "not found" in result.stderr


def test_a_read_key_cannot_add_rules(server: CliServer) -> None:
    key = as_json(server.baton("key", "create", "--role", "read", "--json"))["key"]

    result = server.baton("notify", "add", "--on", "Failed", "--webhook", "http://127.0.0.1:9/", "-k", key)

    assert result.returncode == 4
    assert "permission denied" in result.stderr
