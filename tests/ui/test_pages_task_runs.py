"""The run page's task runs against a real server: a run of 5 plain tasks shows as it always did, a map of 1,000
children is one row (that opens on them, the failed ones first), a run with more task runs than one page says so
and links to the rest, the live refresh stays small, and hostile task names are text.

One server for the module (``conftest.server``, SQLite); task runs are written straight to its database
(``Database.add_task_runs``): a thousand through the API would take the test's time.
"""

from __future__ import annotations

import html
import re

import httpx

from baton.server.ui.task_table import MAX_CHILDREN, MAX_LISTED, MAX_ROWS
from server.harness import TenantContext
from support import ServerProcess
from ui.ui_support import XSS, XSS_ESCAPED, Database, browser

EN = "\N{EN DASH}"
LIVE = {"HX-Request": "true"}


def task_section(page: str) -> str:
    """The run page's "Task runs" card, chart left out."""
    start = page.index("<h2>Task runs</h2>")
    section = page[start : page.index("</section>", start)]
    return re.sub(r"<svg.*?</svg>", "", section, flags=re.DOTALL)


def text(markup: str) -> str:
    """What a reader sees: tags dropped, entities decoded, white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def children(task: str, count: int, failed: tuple[int, ...] = (), running: tuple[int, ...] = ()) -> list[tuple]:
    """``count`` children of a map, 8 at a time, of 1.0 s to 1.4 s; ``running`` ones have no end yet."""
    runs: list[tuple] = []
    for i in range(count):
        start = 1 + (i // 8) * 0.05
        state = "Failed" if i in failed else "Running" if i in running else "Success"
        runs.append((f"{task}[{i}]", state, start, None if i in running else start + 1 + (i % 5) * 0.1))
    return runs


def test_five_plain_task_runs_show_as_before(admin_ui: httpx.Client, db: Database, tenant: TenantContext) -> None:
    staged = tenant.stage("Success")
    names = ["extract", "validate", "load", "report", "notify"]
    db.add_task_runs(
        tenant, staged.id, [(n, "Failed" if n == "load" else "Success", i * 5, i * 5 + 4) for i, n in enumerate(names)]
    )

    section = task_section(admin_ui.get(f"/runs/{staged.id}").text)

    # The markup of the table before mapped tasks were grouped, row for row.
    rows = "".join(
        f'<tr><td>{name}</td><td><span class="badge st-{state.lower()}">{state}</span></td>'
        f'<td class="num">1</td><td>4.0 s</td></tr>'
        for name, state in ((n, "Failed" if n == "load" else "Success") for n in names)
    )
    head = '<thead><tr><th>Task</th><th>State</th><th class="num">Attempt</th><th>Duration</th></tr></thead>'
    assert re.search(rf"<table>\s*{re.escape(head)}\s*<tbody>{re.escape(rows)}</tbody>\s*</table>", section)
    assert "<details" not in section
    assert "Showing" not in section


def test_a_thousand_mapped_children_are_one_row_with_counts_and_the_failed_ones_first(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Failed")
    db.add_task_runs(tenant, staged.id, children("together", 1000, failed=(17, 503, 871)))

    section = task_section(admin_ui.get(f"/runs/{staged.id}").text)

    (group,) = re.findall(r'<tr class="group">.*?</tr>\s*</tbody></table></div>.*?</td></tr>', section, re.DOTALL)
    summary = text(re.search(r"<summary>(.*?)</summary>", group, re.DOTALL).group(1))
    assert summary == (
        f"together[0{EN}999] 1000 runs · 997 Success 3 Failed · 1.0 s {EN} 1.4 s Failed: [17], [503], [871]"
    )
    listed = re.findall(r"<tr><td>(together\[\d+\])</td><td><span class=\"badge st-(\w+)\"", group)
    assert listed[:4] == [
        ("together[17]", "failed"),
        ("together[503]", "failed"),
        ("together[871]", "failed"),
        ("together[0]", "success"),
    ]
    assert len(listed) == MAX_CHILDREN
    assert f"and {1000 - MAX_CHILDREN} more Success" in text(group)
    assert "Showing" not in section  # one page holds all 1,000: nothing is missing


def test_more_task_runs_than_one_page_are_counted_and_the_rest_is_a_click_away(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Success")
    db.add_task_runs(
        tenant, staged.id, [*children("together", 1000), ("load", "Success", 9, 10), ("report", "Success", 10, 11)]
    )

    section = task_section(admin_ui.get(f"/runs/{staged.id}").text)

    notice = re.search(r'<p class="incomplete" id="tasks-incomplete">(.*?)</p>', section, re.DOTALL)
    assert notice is not None
    assert text(notice.group(1)).startswith("Showing the first 1000 of 1002 task runs.")
    assert f"GET /api/flow_runs/{staged.id}/task_runs" in text(notice.group(1))
    rest = re.search(r'<a href="(/runs/[^"]+/tasks\?cursor=[^"]+)">those not loaded here</a>', notice.group(1))
    assert rest is not None
    # The link shows the two task runs the run page did not load, and says where they are in the whole.
    page = admin_ui.get(html.unescape(rest.group(1))).text
    assert re.findall(r"<tr><td>([^<]+)</td>", page) == ["load", "report"]
    assert "Task runs 1001" + EN + "1002 of 1002, oldest first." in text(page)
    first = admin_ui.get(f"/runs/{staged.id}/tasks").text
    assert len(re.findall(r"<tr><td>", first)) == 1000
    assert 'rel="next"' in first


def test_a_table_of_many_plain_task_runs_stops_and_says_how_many_it_shows(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Success")
    db.add_task_runs(tenant, staged.id, [("shout", "Success", i, i + 1) for i in range(MAX_ROWS + 30)])

    section = task_section(admin_ui.get(f"/runs/{staged.id}").text)

    assert len(re.findall(r"<tr><td>shout</td>", section)) == MAX_ROWS
    assert f"Showing the first {MAX_ROWS} of {MAX_ROWS + 30} task runs." in text(section)


def test_the_live_refresh_of_a_thousand_children_sends_a_bounded_table(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Running")
    db.add_task_runs(tenant, staged.id, children("together", 1000, failed=(3,), running=tuple(range(990, 1000))))

    live = admin_ui.get(f"/runs/{staged.id}?fragment=live", headers=LIVE).text

    assert 'hx-trigger="every 2s"' in live
    table = live[live.index("<table") : live.rindex("</table>")]
    # Before grouping the table alone was ~120 KB for 1,000 runs; now a summary row and at most MAX_CHILDREN children.
    assert len(table.encode()) < 20_000
    assert len(re.findall(r"<tr>", table)) <= MAX_CHILDREN + 1
    summary = text(re.search(r"<summary>(.*?)</summary>", table, re.DOTALL).group(1))
    assert "989 Success 1 Failed 10 Running" in summary
    assert "Running: [990], [991], [992], [993], [994], [995], [996], [997] and 2 more" in summary
    # A child runs: its row's content moves with the clock, so the swap may not keep the old one (no hx-preserve).
    assert "hx-preserve" not in table


def test_the_live_table_of_ten_maps_of_a_hundred_stays_bounded_too(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Running")
    db.add_task_runs(tenant, staged.id, [run for task in "abcdefghij" for run in children(f"map_{task}", 100)])

    live = admin_ui.get(f"/runs/{staged.id}?fragment=live", headers=LIVE).text

    table = live[live.index("<table") : live.rindex("</table>")]
    assert len(re.findall(r'<tr class="group">', table)) == 10
    assert len(re.findall(r"<tr>", table)) == MAX_LISTED + 1  # the children listed in all, and the head
    assert len(table.encode()) < 60_000


def test_a_finished_map_in_a_live_run_is_kept_open_across_refreshes(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Running")
    db.add_task_runs(tenant, staged.id, [*children("fetch", 3), ("load", "Running", 5, None)])

    first = admin_ui.get(f"/runs/{staged.id}?fragment=live", headers=LIVE).text
    again = admin_ui.get(f"/runs/{staged.id}?fragment=live", headers=LIVE).text

    key = re.search(r'<details class="group" id="(map-[0-9a-f]+)" hx-preserve="true">', first)
    assert key is not None
    assert f'id="{key.group(1)}"' in again  # the same id while nothing in it changed: htmx keeps the one shown


def test_hostile_task_names_are_text_and_do_not_break_the_grouping(
    admin_ui: httpx.Client, db: Database, tenant: TenantContext
) -> None:
    staged = tenant.stage("Failed")
    long = "n" * 490
    names = [f"{XSS}[0]", f"{XSS}[1]", "x[", "x[", "x[99999999999999999999]", "x[99999999999999999999]", "x[-1]"]
    names += ["x[-1]", f"{long}[0]", f"{long}[1]"]
    db.add_task_runs(tenant, staged.id, [(name, "Failed", 1, 2) for name in names])

    page = admin_ui.get(f"/runs/{staged.id}").text
    section = task_section(page)

    assert "<script>alert" not in page
    groups = [text(found) for found in re.findall(r'<span class="group-name">(.*?)</span>', section)]
    assert groups == [f"{XSS}[0{EN}1]", f"{long}[0{EN}1]"]
    assert f'<span class="group-name">{XSS_ESCAPED}[0{EN}1]</span>' in section
    plain = re.findall(r'<tr><td>([^<]*)</td><td><span class="badge st-failed">', section)
    assert [html.unescape(name) for name in plain if not name.startswith(("&lt;", "n"))] == names[2:8]


def test_the_list_of_every_task_run_refuses_junk_and_other_tenants_runs(
    server: ServerProcess, admin_ui: httpx.Client, reader_ui: httpx.Client, tenant: TenantContext, other: TenantContext
) -> None:
    mine, theirs = tenant.stage("Success"), other.stage("Success")

    with browser(server) as signed_out:
        assert signed_out.get(f"/runs/{mine.id}/tasks").headers["location"].startswith("/login?next=")
    assert reader_ui.get(f"/runs/{mine.id}/tasks").status_code == 200

    assert admin_ui.get(f"/runs/{mine.id}/tasks").status_code == 200
    assert admin_ui.get(f"/runs/{mine.id}/tasks?cursor=junk").status_code in (400, 422)
    assert admin_ui.get(f"/runs/{theirs.id}/tasks").status_code == 404
    assert "No task runs yet." in text(admin_ui.get(f"/runs/{mine.id}/tasks").text)
