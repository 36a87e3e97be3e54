"""``baton limits set|list|delete`` against a real ``baton server start``: output, JSON, exit codes, bad input."""

from __future__ import annotations

import json
import uuid

import pytest
from cli_support import CliServer

from baton.client import Client


def _label() -> str:
    return f"gpu-{uuid.uuid4().hex[:8]}"


def test_set_list_and_delete(cli_server: CliServer) -> None:
    label = _label()

    created = cli_server.baton("limits", "set", label, "2")
    assert created.returncode == 0, created.stderr
    assert f"Label {label!r}: at most 2 concurrent run(s) (0 now)." in created.stdout

    listed = cli_server.baton("limits", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [item for item in json.loads(listed.stdout) if item["label"] == label]
    assert [(item["max_concurrent_runs"], item["active"]) for item in mine] == [(2, 0)]
    table = cli_server.baton("limits", "list")
    assert label in table.stdout

    deleted = cli_server.baton("limits", "delete", label, "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["label"] == label
    assert label not in cli_server.baton("limits", "list").stdout


@pytest.mark.parametrize(
    "args",
    [
        ("set", "bad label", "1"),
        ("set", "a,b", "1"),
        ("set", "gpu", "0"),
        ("set", "gpu", "-1"),
        ("set", "gpu", "100001"),
        ("set", "gpu", "two"),
        ("set", "gpu"),
        ("delete", "bad label"),
    ],
)
def test_bad_input_exits_2_without_a_traceback(cli_server: CliServer, args: tuple[str, ...]) -> None:
    result = cli_server.baton("limits", *args)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.strip()


def test_deleting_a_label_without_a_limit_exits_1(cli_server: CliServer) -> None:
    result = cli_server.baton("limits", "delete", _label())

    assert result.returncode == 1
    assert "has no limit" in result.stderr


def test_a_read_key_lists_but_may_not_set(cli_server: CliServer) -> None:
    with Client(cli_server.url, cli_server.admin_key) as admin:
        read_key = admin.create_api_key("read").key

    refused = cli_server.baton("limits", "set", _label(), "1", BATON__API__KEY=read_key)
    listed = cli_server.baton("limits", "list", BATON__API__KEY=read_key)

    assert refused.returncode == 4 and "permission denied" in refused.stderr
    assert listed.returncode == 0
