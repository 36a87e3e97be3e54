"""The web UI in a real browser (Debian's Chromium, headless, through Playwright), against a real server and a
real local agent: the flows of use a team goes through every day."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from support import register_source_flow

from .conftest import Screenshots, UiStack, sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.integration


def test_sign_in_run_a_flow_from_its_form_and_watch_it_succeed_live(
    ui_stack: UiStack, page: Page, screenshots: Screenshots
) -> None:
    from playwright.sync_api import expect

    # Given a signed-out browser: the dashboard sends it to the sign-in form, which lands back on the dashboard
    page.goto(f"{ui_stack.url}/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    screenshots.take(page, "login")
    sign_in(page, ui_stack.url, ui_stack.server.admin_key)
    expect(page.locator("h1")).to_have_text("Dashboard")

    # When the user opens the flow and sends its Run form with a bad value
    page.click("nav >> text=Flows")
    page.click("a:text-is('greet')")
    expect(page.locator("h1")).to_contain_text("greet")
    page.fill("input[name='p.name']", "web")
    page.fill("input[name='p.times']", "lots")
    page.click("button:has-text('Run greet')")
    # Then the form comes back with the problem beside the field, and keeps what was typed
    expect(page.locator(".field.invalid .field-error")).to_have_text("'lots' is not a whole number")
    expect(page.locator("input[name='p.name']")).to_have_value("web")
    screenshots.take(page, "flow")

    # When the value is fixed and the form sent again
    page.fill("input[name='p.times']", "6")
    page.click("button:has-text('Run greet')")
    # Then the new run's page opens, its log lines arrive while it runs, and its state reaches Success
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    expect(page.locator("#logs")).to_contain_text("hello web 5", timeout=60_000)
    expect(page.locator("#run-live h1 .badge")).to_have_text("Success", timeout=30_000)
    expect(page.locator("#logs .log-line", has_text="hello web")).to_have_count(6)
    # And the level filter and the search narrow the lines in the page
    page.fill("#log-search", "web 3")
    expect(page.locator("#logs .log-line:visible")).to_have_count(1)
    page.fill("#log-search", "")
    screenshots.take(page, "run")

    # And the run is listed, and the dashboard counts it
    page.click("nav >> text=Runs")
    expect(page.locator("#run-rows tr").first).to_contain_text("greet")
    screenshots.take(page, "runs")
    page.click("nav >> text=Dashboard")
    expect(page.locator(".chart svg")).to_be_visible()
    screenshots.take(page, "dashboard")
    page.click("nav >> text=Flows")
    screenshots.take(page, "flows")

    # And signing out ends the session: the dashboard asks to sign in again
    page.click("button:has-text('Sign out')")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(f"{ui_stack.url}/runs")
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_cancel_a_long_run_from_its_page(ui_stack: UiStack, page: Page) -> None:
    from playwright.sync_api import expect

    sign_in(page, ui_stack.url, ui_stack.server.admin_key, "/flows/sleepy")
    page.click("button:has-text('Run sleepy')")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    expect(page.locator("#run-live h1 .badge")).to_have_text("Running", timeout=60_000)
    expect(page.locator("#logs")).to_contain_text("waiting", timeout=30_000)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel')")
    expect(page.locator("#run-live h1 .badge")).to_have_text("Cancelled", timeout=60_000)
    expect(page.locator("button:has-text('Cancel')")).to_have_count(0)
    expect(page.locator("button:has-text('Retry')")).to_have_count(1)


def test_a_read_key_sees_masked_env_and_no_buttons_and_cannot_post(
    ui_stack: UiStack, context: BrowserContext, screenshots: Screenshots
) -> None:
    from playwright.sync_api import expect

    # Given a run whose run config carries a secret in its env
    admin = ui_stack.server.client()
    register_source_flow(admin, "secretive", run_config={"env": {"API_TOKEN": "s3cr3t-value"}})
    run = admin.create_flow_run(flow_name="secretive")
    read_key = admin.create_api_key("read", name="viewer").key
    page = context.new_page()
    sign_in(page, ui_stack.url, read_key, f"/runs/{run.id}")
    expect(page.locator("#run-live h1 .badge")).to_have_text("Success", timeout=60_000)
    # Then a read key sees the env's names, not its values (as over REST)
    expect(page.locator("body")).to_contain_text("API_TOKEN")
    assert "s3cr3t-value" not in page.content()
    # No write is offered
    expect(page.locator("button:has-text('Cancel')")).to_have_count(0)
    expect(page.locator("button:has-text('Retry')")).to_have_count(0)
    page.goto(f"{ui_stack.url}/flows/greet")
    expect(page.locator("#run-form")).to_contain_text("This key may not start runs.")
    expect(page.locator("nav >> text=Keys")).to_have_count(0)
    # And a write sent anyway, with the session's cookie but without its CSRF token, is refused and changes nothing
    answer = page.request.post(f"{ui_stack.url}/flows/greet/runs", form={"p.name": "sneaky"})
    assert answer.status == 403
    assert not [r for r in admin.list_flow_runs(flow_name="greet") if r.parameters.get("name") == "sneaky"]
    screenshots.take(page, "read-key-flow")


def test_pages_fit_a_phone_screen(ui_stack: UiStack, browser: Browser) -> None:
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = phone.new_page()
        sign_in(page, ui_stack.url, ui_stack.server.admin_key)
        for path in ("/", "/runs", "/flows", "/flows/greet", "/agents"):
            page.goto(f"{ui_stack.url}{path}")
            # Nothing makes the page wider than the screen (tables scroll inside their cards)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    finally:
        phone.close()


def test_an_agent_that_stops_is_shown_stale(ui_stack: UiStack, page: Page, screenshots: Screenshots) -> None:
    from playwright.sync_api import expect

    # Given an agent that registered once and was never heard from again
    admin = ui_stack.server.client()
    admin.register_agent("gone-quiet", "local", ["gpu"])
    sign_in(page, ui_stack.url, ui_stack.server.admin_key, "/agents")
    # Then (the server calls an agent stale after 4 s here) its row turns stale, while the running agent stays live
    quiet = page.locator("tr", has_text="gone-quiet")
    for _ in range(20):
        if "stale" in quiet.inner_text():
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(quiet.locator(".badge")).to_have_text("stale")
    expect(page.locator("tr", has_text="ui-agent").locator(".badge")).to_have_text("live")
    screenshots.take(page, "agents")
    page.click("nav >> text=Keys")
    screenshots.take(page, "keys")
