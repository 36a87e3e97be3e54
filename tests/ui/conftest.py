"""Fixtures of the web UI's tests.

HTTP tests: one real server per test module, a fresh tenant per test (with flow ``hello``), and clients signed in
with its keys (see ``ui_support``).

Browser fixtures: Debian's Chromium driven by Playwright (headless, nothing downloaded), against a real server
and a real local agent.

Without Chromium or Playwright the browser tests skip with the reason; under ``CI=true`` they fail instead.
Screenshots of each page go to ``$BATON_SCREENSHOTS`` when it is set (``make screenshots`` sets docs/screenshots),
else to the test's temporary folder, so the code that takes them runs on every test run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from server.harness import TenantContext
from support import ServerProcess, wait_for
from ui.ui_support import Database
from ui.ui_support import sign_in as http_sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = os.environ.get("BATON_CHROMIUM", "/usr/bin/chromium")


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


# Per module, not per session: Playwright's sync API keeps an event loop running in the main thread while it is
# open, and any later test of the same worker that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("Playwright for Python is not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        _skip_or_fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set BATON_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) at laptop size, in a fixed time zone other than UTC."""
    created = browser.new_context(viewport={"width": 1280, "height": 860}, timezone_id="Europe/Berlin")
    created.set_default_timeout(15_000)
    yield created
    created.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


class Screenshots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    chosen = os.environ.get("BATON_SCREENSHOTS")
    return Screenshots(Path(chosen) if chosen else tmp_path / "screenshots")


FLOWS_SOURCE = '''
import time

from baton import flow, task


@task
def shout(name: str, times: int) -> str:
    for n in range(times):
        print(f"hello {name} {n}", flush=True)
        time.sleep(0.2)
    return name


@flow
def greet(name: str, times: int = 3, loud: bool = False) -> str:
    """Say hello a few times."""
    return shout(name, times)


@task
def wait(seconds: int) -> None:
    print("waiting", flush=True)
    time.sleep(seconds)


@flow
def sleepy(seconds: int = 120) -> None:
    wait(seconds)
'''


class UiStack:
    """A server, its admin key and a local agent (no host label: it takes runs without labels)."""

    def __init__(self, server: ServerProcess, agent: subprocess.Popen[bytes]) -> None:
        self.server = server
        self.agent = agent

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    home = tmp_path_factory.mktemp("ui-server")
    server = ServerProcess(home, BATON__SERVER__AGENT_STALE_SECONDS="4").start()
    flows_file = home / "ui_flows.py"
    flows_file.write_text(FLOWS_SOURCE)
    cli = [sys.executable, "-m", "baton.cli"]
    subprocess.run([*cli, "register", str(flows_file)], env=server.env(), check=True, capture_output=True, timeout=60)
    env = server.env(BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="1", BATON__AGENT__POLL_WAIT_SECONDS="2")
    with (home / "agent.log").open("ab") as log:
        agent = subprocess.Popen(
            [*cli, "agent", "local", "start", "--no-hostname-label", "--name", "ui-agent"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: server.client().list_agents(), timeout=30, what="the local agent to register")
        yield UiStack(server, agent)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def sign_in(page: Page, url: str, key: str, path: str = "/") -> None:
    """Sign in through the form, landing on ``path``."""
    page.goto(f"{url}{path}")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}{path}")


# --- HTTP tests ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    started = ServerProcess(tmp_path_factory.mktemp("ui-pages")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def db(server: ServerProcess) -> Iterator[Database]:
    database = Database(server)
    yield database
    database.close()


def _tenant_with_hello(server: ServerProcess, db: Database) -> Iterator[TenantContext]:
    context = TenantContext.create(server, db.factory)
    context.register_flow()
    yield context
    context.close()


@pytest.fixture
def tenant(server: ServerProcess, db: Database) -> Iterator[TenantContext]:
    yield from _tenant_with_hello(server, db)


@pytest.fixture
def other(server: ServerProcess, db: Database) -> Iterator[TenantContext]:
    """A second tenant, for the cross-tenant tests."""
    yield from _tenant_with_hello(server, db)


@pytest.fixture
def admin_ui(server: ServerProcess, tenant: TenantContext) -> Iterator[httpx.Client]:
    with http_sign_in(server, tenant.admin_key) as client:
        yield client


@pytest.fixture
def reader_ui(server: ServerProcess, tenant: TenantContext) -> Iterator[httpx.Client]:
    with http_sign_in(server, tenant.key("read")) as client:
        yield client
