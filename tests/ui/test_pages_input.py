"""The web UI against hostile input: markup in everything a user or a flow can name or print is shown as text, and
junk (query strings, form bodies, ids, NUL bytes) is refused with a 4xx, never a 500, with nothing stored.

One server for the module (``conftest.server``, SQLite), one tenant and one admin session for the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest

from server.harness import TenantContext
from support import ServerProcess
from ui.ui_support import XSS, XSS_ESCAPED, Database, csrf_of, post_form, sign_in

TYPED_SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 1},
        "ratio": {"type": "number"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string", "title": f"Note {XSS}", "description": XSS},
    },
    "required": ["count"],
}


@pytest.fixture(scope="module")
def tenant(server: ServerProcess, db: Database) -> Iterator[TenantContext]:
    context = TenantContext.create(server, db.factory)
    context.register_flow()
    context.register_flow("typed", parameters_schema=TYPED_SCHEMA, description=f"described as {XSS}")
    yield context
    context.close()


@pytest.fixture(scope="module")
def ui(server: ServerProcess, tenant: TenantContext) -> Iterator[httpx.Client]:
    with sign_in(server, tenant.admin_key) as client:
        yield client


@pytest.fixture(scope="module")
def token(ui: httpx.Client) -> str:
    return csrf_of(ui)


def assert_no_markup(page: str) -> None:
    assert "<script>alert" not in page
    assert "<script>" not in page.lower().replace('<script src="', "")


def stream_events(ui: httpx.Client, path: str, **headers: str) -> list[tuple[str, str]]:
    """The (event, data) pairs of a finished run's log stream, up to its ``end`` event."""
    events: list[tuple[str, str]] = []
    with ui.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, line.removeprefix("data: ")))
                if name == "end":
                    break
    return events


# --- markup is text -----------------------------------------------------------------------------------------------


def test_flow_names_cannot_carry_markup(tenant: TenantContext) -> None:
    response = tenant.raw(tenant.admin_key).post("/api/flows", json={"name": XSS, "entrypoint": "hello"})

    assert response.status_code == 422


def test_flow_description_and_parameter_titles_are_escaped(ui: httpx.Client) -> None:
    page = ui.get("/flows/typed").text

    assert page.count(XSS_ESCAPED) >= 3  # the description, a parameter's title and its description
    assert_no_markup(page)


def test_parameter_value_and_state_message_are_escaped(ui: httpx.Client, token: str, tenant: TenantContext) -> None:
    created = post_form(ui, "/flows/hello/runs", {"csrf_token": token, "p.name": XSS})
    run_id = created.headers["location"].removeprefix("/runs/")
    failed = tenant.stage("Running")
    tenant.client(failed.token or "").set_flow_run_state(failed.id, "Failed", XSS)

    parameters_page = ui.get(f"/runs/{run_id}").text
    message_page = ui.get(f"/runs/{failed.id}").text

    assert created.status_code == 303
    assert tenant.run(run_id).parameters == {"name": XSS}
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in parameters_page
    assert XSS_ESCAPED in message_page
    assert_no_markup(parameters_page)
    assert_no_markup(message_page)


def test_label_with_markup_is_refused_and_shown_as_text(
    ui: httpx.Client, token: str, db: Database, tenant: TenantContext
) -> None:
    runs = db.runs_of(tenant)

    response = post_form(ui, "/flows/hello/runs", {"csrf_token": token, "labels": XSS})

    assert response.status_code == 422
    assert_no_markup(response.text)
    assert db.runs_of(tenant) == runs


def test_key_name_with_markup_is_escaped(ui: httpx.Client, token: str) -> None:
    created = post_form(ui, "/keys", {"csrf_token": token, "role": "read", "name": XSS})

    assert created.status_code == 201
    assert XSS_ESCAPED in created.text
    assert_no_markup(created.text)
    assert_no_markup(ui.get("/keys").text)


def test_log_line_and_task_name_with_markup_are_escaped_on_the_page_and_json_in_the_stream(
    ui: httpx.Client, tenant: TenantContext
) -> None:
    staged = tenant.stage("Running")
    run_token = tenant.client(staged.token or "")
    line = {"timestamp": datetime.now(UTC).isoformat(), "level": 40, "message": XSS}
    run_token.write_logs(staged.id, [line, {**line, "message": "second"}])
    run_token.create_task_run(staged.id, XSS, "Running", XSS)
    run_token.set_flow_run_state(staged.id, "Success")

    page = ui.get(f"/runs/{staged.id}").text
    events = stream_events(ui, f"/runs/{staged.id}/logs/stream")
    first_id = json.loads(next(data for name, data in events if name == "log"))["id"]
    # A browser reconnecting after the first line (log ids count across all runs: never from 1 here)
    resumed = stream_events(ui, f"/runs/{staged.id}/logs/stream", **{"Last-Event-ID": str(first_id)})

    assert page.count(XSS_ESCAPED) >= 3  # the log line, the task table, the Gantt chart
    assert_no_markup(page)
    logs = [json.loads(data) for name, data in events if name == "log"]
    assert [log["message"] for log in logs] == [XSS, "second"]
    assert logs[0]["level_name"] == "ERROR"
    assert events[-1] == ("end", json.dumps({"reason": "final"}))
    assert [json.loads(data)["message"] for name, data in resumed if name == "log"] == ["second"]


@pytest.mark.parametrize(
    "path",
    [
        f"/runs/{quote(XSS, safe='')}",
        f"/flows/{quote(XSS, safe='')}",
        f"/runs?state={quote(XSS)}&window={quote(XSS)}&label={quote(XSS)}&flow={quote(XSS)}",
        f"/login?next=/{quote(XSS)}",
    ],
)
def test_reflected_input_is_escaped(ui: httpx.Client, path: str) -> None:
    response = ui.get(path)

    assert response.status_code in (200, 303, 404)
    assert_no_markup(response.text)


# --- junk never gives a 500 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("state=Nope", "unknown state"),
        ("window=99y", "unknown time window"),
        ("state=Failed&state=Nope", ""),
        ("label=%25%27%22%5C", ""),
        ("flow=%00", ""),
        ("window=" + "9" * 5000, "unknown time window"),
    ],
)
def test_junk_filters_are_shown_as_problems(ui: httpx.Client, query: str, problem: str) -> None:
    response = ui.get(f"/runs?{query}")

    assert response.status_code == 200
    assert problem in response.text


@pytest.mark.parametrize("cursor", ["garbage", "%00", "eyJ4IjoxfQ", "A" * 3000])
def test_junk_cursor_is_refused_without_a_500(ui: httpx.Client, cursor: str) -> None:
    response = ui.get(f"/runs?cursor={cursor}", headers={"HX-Request": "true"})

    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    "path",
    ["/runs/%00", "/runs/nope", "/runs/%00?fragment=live", "/runs/nope/logs/stream", "/flows/%00", "/flows/x%00y"],
)
def test_unknown_or_nul_ids_are_not_found(ui: httpx.Client, path: str) -> None:
    assert ui.get(path).status_code == 404


@pytest.mark.parametrize(
    "path", ["/ui/static/..%2f..%2f..%2fpyproject.toml", "/ui/static/../../server/ui/web.py", "/ui/static/%00"]
)
def test_static_files_do_not_leave_their_folder(ui: httpx.Client, path: str) -> None:
    response = ui.get(path)

    assert response.status_code == 404
    assert "import" not in response.text


@pytest.mark.parametrize(
    "path", ["/runs/%00/cancel", "/runs/nope/retry", "/keys/%00/revoke", "/keys/nope/revoke", "/flows/%00/runs"]
)
def test_writes_to_unknown_or_nul_ids_are_not_found(ui: httpx.Client, token: str, path: str) -> None:
    assert post_form(ui, path, {"csrf_token": token}).status_code == 404


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"csrf_token": "x"}'),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n"),
        ("text/plain", b"csrf_token=x"),
        ("application/x-www-form-urlencoded", b"p.name=\xff\xfe"),
        ("application/x-www-form-urlencoded", b"p.name=a&p.name=b"),
        ("application/x-www-form-urlencoded", "&".join(f"f{n}=1" for n in range(201)).encode()),
    ],
)
@pytest.mark.parametrize("path", ["/flows/hello/runs", "/login"])
def test_bodies_that_are_not_a_plain_form_are_refused(
    ui: httpx.Client, token: str, db: Database, tenant: TenantContext, path: str, content_type: str, body: bytes
) -> None:
    runs = db.runs_of(tenant)
    sep = b"&" if content_type.endswith("urlencoded") else b""
    full = body + (sep + f"csrf_token={token}".encode() if sep else b"")

    response = ui.post(path, content=full, headers={"Content-Type": content_type})

    assert response.status_code == 400
    assert db.runs_of(tenant) == runs


def test_a_body_over_the_servers_limit_is_refused(ui: httpx.Client, token: str) -> None:
    body = f"csrf_token={token}&p.name=".encode() + b"x" * (10 * 1024 * 1024 + 1)

    response = ui.post("/flows/hello/runs", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 413


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"p.count": "abc"}, "is not a whole number"),
        ({"p.count": "1.5"}, "is not a whole number"),
        ({"p.count": ""}, "required"),
        ({"p.count": "1", "p.ratio": "nan"}, "finite"),
        ({"p.count": "1", "p.ratio": "1e999"}, "finite"),
        ({"p.count": "1", "p.mode": "medium"}, "choose one of fast, slow"),
        ({"p.count": "1", "p.tags": "[1,"}, "not valid JSON"),
        ({"p.count": "1", "p.tags": "NaN"}, "not valid JSON"),
        ({"p.count": "1", "p.tags": '{"a": 1}'}, "tags"),
        ({"p.count": "1", "p.note": "a\x00b"}, "NUL"),
        ({"p.count": "1", "p.note": "x" * 100_001}, "longer than"),
        ({"p.count": "1", "labels": "a b"}, "invalid label"),
    ],
)
def test_run_form_with_bad_values_shows_an_inline_error_and_creates_nothing(
    ui: httpx.Client, token: str, db: Database, tenant: TenantContext, fields: dict[str, str], message: str
) -> None:
    runs = db.runs_of(tenant, "typed")

    response = post_form(ui, "/flows/typed/runs", {"csrf_token": token, **fields})

    assert response.status_code == 422
    assert message in response.text
    assert 'action="/flows/typed/runs"' in response.text
    assert db.runs_of(tenant, "typed") == runs


def test_run_form_with_good_values_creates_one_run_once(
    ui: httpx.Client, token: str, db: Database, tenant: TenantContext
) -> None:
    runs = db.runs_of(tenant, "typed")
    fields = {
        "csrf_token": token,
        "idempotency_key": "form-once-1",
        "p.count": " 3 ",
        "p.ratio": "0.5",
        "p.mode": "slow",
        "p.flag": "true",
        "p.tags": '["a", "b"]',
        "p.note": "",
        "labels": "x, y",
    }

    first = post_form(ui, "/flows/typed/runs", fields)
    again = post_form(ui, "/flows/typed/runs", fields)

    assert first.status_code == 303
    run = tenant.run(first.headers["location"].removeprefix("/runs/"))
    assert run.parameters == {"count": 3, "ratio": 0.5, "mode": "slow", "flag": True, "tags": ["a", "b"]}
    assert run.labels == ["x", "y"]
    assert again.status_code in (303, 422)
    assert db.runs_of(tenant, "typed") == runs + 1


@pytest.mark.parametrize(
    ("path", "fields", "status"),
    [
        ("/keys", {"role": "superuser"}, 422),
        ("/flows/hello/schedule/bogus", {}, 404),
        ("/flows/nope/schedule/pause", {}, 404),
    ],
)
def test_other_bad_writes_are_refused_without_a_500(
    ui: httpx.Client, token: str, db: Database, tenant: TenantContext, path: str, fields: dict[str, str], status: int
) -> None:
    keys = db.live_keys_of(tenant)

    response = post_form(ui, path, {"csrf_token": token, **fields})

    assert response.status_code == status
    assert db.live_keys_of(tenant) == keys


def test_key_name_with_nul_is_refused_as_rest_does(
    ui: httpx.Client, token: str, db: Database, tenant: TenantContext
) -> None:
    keys = db.live_keys_of(tenant)
    rest = tenant.raw(tenant.admin_key).post("/api/keys", json={"role": "read", "name": "a\x00b"})

    response = post_form(ui, "/keys", {"csrf_token": token, "role": "read", "name": "a\x00b"})

    assert rest.status_code == 422
    assert response.status_code == 422
    assert db.live_keys_of(tenant) == keys


def test_retry_of_a_run_that_has_not_failed_is_refused(ui: httpx.Client, token: str, tenant: TenantContext) -> None:
    staged = tenant.stage("Scheduled")

    response = post_form(ui, f"/runs/{staged.id}/retry", {"csrf_token": token})

    assert response.status_code == 409
    assert tenant.run(staged.id).state == "Scheduled"


def test_retry_sent_twice_creates_one_run(ui: httpx.Client, token: str, db: Database, tenant: TenantContext) -> None:
    cancelled = tenant.stage("Cancelled")
    runs = db.runs_of(tenant)

    first = post_form(ui, f"/runs/{cancelled.id}/retry", {"csrf_token": token})
    second = post_form(ui, f"/runs/{cancelled.id}/retry", {"csrf_token": token})

    assert first.status_code == 303
    assert second.status_code in (303, 409)
    assert db.runs_of(tenant) == runs + 1


def test_sign_in_with_nul_or_huge_key_is_refused(server: ServerProcess) -> None:
    from ui.ui_support import browser, try_sign_in

    with browser(server) as client:
        keys = ["bk_\x00" + "a" * 42, "k" * 1000, "k" * 5000, "\x00", " "]
        statuses = [try_sign_in(client, key).status_code for key in keys]

    # A key longer than any key is 422; a sign-in body over 4 KiB is not even read (400).
    assert statuses == [401, 422, 400, 401, 422]


@pytest.mark.parametrize(
    "start", ["?after=-5", "?after=abc", "?after=99999999999999999999", "?after=%00", "?after=%C2%B2"]
)
def test_log_stream_junk_offset_starts_from_the_beginning(ui: httpx.Client, tenant: TenantContext, start: str) -> None:
    run = tenant.stage("Cancelled")

    events = stream_events(ui, f"/runs/{run.id}/logs/stream{start}")

    assert events[-1][0] == "end"
