"""The run page of a run with 1,000 mapped children in a real browser (Debian's Chromium through Playwright): the
table is a few rows tall, the failed children show without opening anything, and a finished map that is opened stays
open while the page refreshes itself every 2 s."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from server.harness import TenantContext
from support import ServerProcess, wait_for
from ui.ui_support import Database

from .conftest import Screenshots, sign_in
from .test_pages_task_runs import children

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration
EN = "\N{EN DASH}"


def test_a_run_of_a_thousand_mapped_children_reads_in_one_screen(
    server: ServerProcess, db: Database, tenant: TenantContext, page: Page, screenshots: Screenshots
) -> None:
    from playwright.sync_api import expect

    # Given a run in progress: a finished map of 3, then 1,000 children of which 2 failed and 10 still run
    staged = tenant.stage("Running")
    together = children("together", 1000, failed=(3, 150), running=tuple(range(990, 1000)))
    db.add_task_runs(tenant, staged.id, [("extract", "Success", 0, 1), *children("fetch", 3), *together])

    # When the run's page is opened
    sign_in(page, server.url, tenant.admin_key, f"/runs/{staged.id}")

    # Then each map is one row, and the failed children are named without opening it
    groups = page.locator("details.group")
    expect(groups).to_have_count(2)
    expect(groups.nth(1).locator("summary")).to_contain_text(f"together[0{EN}995]")
    expect(groups.nth(1).locator(".attention.st-failed")).to_have_text("Failed: [3], [150]")
    expect(page.locator("#tasks-incomplete")).to_contain_text("Showing the first 1000 of 1004 task runs.")
    logs_top = page.locator("#logs").evaluate("element => element.getBoundingClientRect().top + window.scrollY")
    assert logs_top < 2000, "the Logs section is pushed down the page"

    # When both maps are opened and the live part of the page is swapped twice
    page.evaluate("window.swaps = 0; document.addEventListener('htmx:afterSwap', () => { window.swaps += 1; })")
    groups.nth(0).locator("summary").click()
    groups.nth(1).locator("summary").click()
    expect(groups.nth(1).locator("table.children tr").first).to_contain_text("together[3]")
    # (Polled from here: the pages' CSP refuses the eval that wait_for_function's string predicate needs.)
    wait_for(lambda: page.evaluate("window.swaps") >= 2, timeout=10, what="two refreshes of the live part")

    # Then the finished map is still open; the one whose children run was drawn anew (closed) with their progress
    expect(page.locator("details.group").nth(0)).to_have_js_property("open", True)
    expect(page.locator("details.group").nth(1)).to_have_js_property("open", False)
    screenshots.take(page, "run-mapped")
